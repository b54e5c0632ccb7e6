//! Explaining a failed start: which shard could not start and why (io_uring, locked memory,
//! descriptors), with what to do about it.

/// A glommio start-up error, with a hint for the usual causes.
pub(crate) fn explain_glommio(e: &glommio::GlommioError<()>) -> String {
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
