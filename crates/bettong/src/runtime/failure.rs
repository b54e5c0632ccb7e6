//! Explaining a failed start: which shard could not start and why (io_uring, locked memory,
//! descriptors), with what to do about it.

use std::sync::mpsc;
use std::time::Duration;

use crate::metrics::Summary;

/// Why a shard exited during start-up: the error of the first shard whose executor failed
/// (typically io_uring refused), with what to do about it.
///
/// Each shard is joined on a thread of its own, because a shard that did start may wait for
/// one that did not (a keyed stage waits for its rings to close) and never end; this waits for
/// the first failure only, and leaves the others to end with the process.
pub(crate) fn shard_failure(shards: Vec<glommio::ExecutorJoinHandle<Summary>>) -> String {
    let (tx, rx) = mpsc::channel();
    for (i, h) in shards.into_iter().enumerate() {
        let tx = tx.clone();
        let _ = std::thread::Builder::new()
            .name("bettong-join".to_string())
            .spawn(move || {
                if let Err(e) = h.join() {
                    let _ = tx.send((i, e));
                }
            });
    }
    drop(tx);
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok((i, e)) => format!("shard {i} could not start: {}", explain_glommio(&e)),
        Err(_) => "a shard exited during start-up (no error reported)".to_string(),
    }
}

/// A glommio start-up error, with a hint for the usual causes.
fn explain_glommio(e: &glommio::GlommioError<()>) -> String {
    const MEMLOCK: &str = "io_uring needs locked memory: raise the limit (RLIMIT_MEMLOCK), e.g. \
        `ulimit -l unlimited` in the shell, LimitMEMLOCK=infinity in a systemd unit, or \
        --ulimit memlock=-1 for docker";
    const NO_URING: &str = "io_uring is not available: it needs Linux 5.8 or later, and may be \
        disabled by the sysctl kernel.io_uring_disabled or by a seccomp profile (as in default \
        container profiles)";
    let io = match e {
        glommio::GlommioError::ReactorError(glommio::ReactorErrorKind::MemLockLimit(
            have,
            want,
        )) => {
            return format!(
                "the locked-memory limit is {have} bytes and io_uring needs {want}: {MEMLOCK}"
            )
        }
        glommio::GlommioError::IoError(io) => io,
        other => return other.to_string(),
    };
    // glommio passes its memlock check on as an `Other` I/O error: "MemLockLimit(have/want)".
    let text = io.to_string();
    if let Some(rest) = text.strip_prefix("MemLockLimit(") {
        let (have, want) = rest
            .trim_end_matches(')')
            .split_once('/')
            .unwrap_or(("?", "?"));
        return format!(
            "the locked-memory limit is {have} bytes and io_uring needs {want}: {MEMLOCK}"
        );
    }
    match io.raw_os_error() {
        Some(libc::ENOMEM) => format!("{io}: {MEMLOCK}"),
        Some(libc::EPERM | libc::ENOSYS) => format!("{io}: {NO_URING}"),
        Some(libc::EMFILE | libc::ENFILE) => {
            format!("{io}: out of file descriptors, raise the limit with `ulimit -n`")
        }
        _ => text,
    }
}
