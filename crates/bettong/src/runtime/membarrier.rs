//! Registers the process for private expedited `membarrier` before any shard runs.
//!
//! glommio calls `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` every time an executor goes to
//! sleep, and registers the process for that command the first time (lazily, on whichever
//! shard sleeps first). Registering waits for an RCU grace period: in a scheduler trace of a
//! 1-shard engine at 100 k msgs/s (`--poll park`) the shard that slept first sat blocked in
//! the kernel for up to 8 ms, with messages arriving. Registered here, on the thread that
//! starts the engine, glommio's own registration later finds the process registered and
//! returns at once.

use std::io;

/// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED` (linux/membarrier.h).
const REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;
/// `MEMBARRIER_CMD_GET_REGISTRATIONS` (Linux 6.3 and later).
#[cfg(test)]
const GET_REGISTRATIONS: libc::c_int = 1 << 9;

fn membarrier(cmd: libc::c_int) -> io::Result<libc::c_long> {
    // SAFETY: membarrier(cmd, flags = 0, cpu_id = 0) takes no pointers and touches no memory
    // of ours; an unknown or unsupported command only returns an error.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            cmd,
            0 as libc::c_uint,
            0 as libc::c_int,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Registers the process for private expedited `membarrier` (idempotent). An error (a kernel
/// without it) is left to glommio, which then falls back to another barrier.
pub(crate) fn register() -> io::Result<()> {
    membarrier(REGISTER_PRIVATE_EXPEDITED).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After `register`, the kernel lists the process as registered for private expedited
    /// membarrier (on kernels that can say: 6.3 and later), and registering again is fine.
    #[test]
    fn registers_the_process() {
        register().expect("membarrier registration");
        register().expect("a second registration");
        match membarrier(GET_REGISTRATIONS) {
            Ok(registered) => assert_ne!(
                registered & libc::c_long::from(REGISTER_PRIVATE_EXPEDITED),
                0,
                "registrations: {registered:#x}"
            ),
            Err(e) => eprintln!("this kernel cannot list membarrier registrations: {e}"),
        }
    }
}
