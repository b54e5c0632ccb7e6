//! Private expedited `membarrier`: registered before any shard runs, and the heavy half of the
//! engine's asymmetric barriers.
//!
//! ## Registration
//!
//! glommio calls `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` every time an executor goes to
//! sleep, and registers the process for that command the first time (lazily, on whichever
//! shard sleeps first). Registering waits for an RCU grace period: in a scheduler trace of a
//! 1-shard engine at 100 k msgs/s (`--poll park`) the shard that slept first sat blocked in
//! the kernel for up to 8 ms, with messages arriving. Registered here, on the thread that
//! starts the engine, glommio's own registration later finds the process registered and
//! returns at once.
//!
//! ## Asymmetric barriers
//!
//! A handshake between two threads where each stores a flag and then loads the other's (a
//! task parking while the other side publishes; a pusher pushing while its shard closes it)
//! needs a store-load barrier on both sides. One side runs it per message (a host thread's
//! `push`), the other rarely (a task about to park, a shard closing its pushers). The hot side
//! calls [`Light::fence`], only a compiler barrier; the rare side calls [`heavy`], which makes every
//! running thread of the process execute a full barrier before it returns.
//!
//! Invariant: every [`Light::fence`] is paired with [`heavy`] on the other side of its handshake, and
//! both decide whether to use `membarrier` through the same once-set [`expedited`], so either
//! both sides use it or both use a full fence.
//!
//! Why: a full fence on the hot side waits for the store before it (a ring's tail, on a line
//! that the consumer is reading) to reach the other core. In `bettong-peer run bettong` (one
//! host thread pushing each message, 1 shard) 61% of `Pusher::push`'s samples sat on the load
//! after the fence in `Waiter::wake_if_parked`, and `push` was a third of the whole run.

use std::io;
use std::sync::atomic::{compiler_fence, fence, Ordering};
use std::sync::OnceLock;

/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` (linux/membarrier.h).
const PRIVATE_EXPEDITED: libc::c_int = 1 << 3;

/// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED` (linux/membarrier.h).
const REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;
/// `MEMBARRIER_CMD_GET_REGISTRATIONS` (Linux 6.3 and later).
#[cfg(test)]
const GET_REGISTRATIONS: libc::c_int = 1 << 9;

fn membarrier(cmd: libc::c_int) -> io::Result<libc::c_long> {
    // Miri cannot make the syscall: under it every barrier takes the full-fence path, as on a
    // kernel without `membarrier`, so the rings' tests run there (`just miri`).
    if cfg!(miri) {
        return Err(io::ErrorKind::Unsupported.into());
    }
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

/// True when [`heavy`] uses `membarrier`: the process is registered for it. Decided once, by
/// whichever barrier or engine start asks first, and the same for every caller after.
pub(crate) fn expedited() -> bool {
    static EXPEDITED: OnceLock<bool> = OnceLock::new();
    *EXPEDITED.get_or_init(|| register().is_ok())
}

/// The hot side of an asymmetric store-load barrier, made once and kept by whoever runs it per
/// message (a ring's waiter, a pusher): [`fence`](Light::fence) keeps the compiler from moving
/// memory accesses across it, and the CPU's ordering is the [`heavy`] side's work; a full
/// fence where `membarrier` is not available. It holds [`expedited`]'s answer, so a fence
/// costs a test of a field the caller already has in cache instead of a look at the global
/// (`Pusher::push` runs two: 9 of its 419 instructions per message with the global).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Light {
    expedited: bool,
}

impl Light {
    /// The light side, as [`expedited`] decided for the whole process.
    pub(crate) fn new() -> Light {
        Light {
            expedited: expedited(),
        }
    }

    /// Orders this thread's store before it against its load after it, with [`heavy`] on the
    /// other side of the handshake.
    #[inline]
    pub(crate) fn fence(self) {
        if self.expedited {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }
}

impl Default for Light {
    fn default() -> Light {
        Light::new()
    }
}

/// The rare side of an asymmetric store-load barrier: when it returns, every thread of the
/// process that was running has executed a full barrier (a thread that was not running went
/// through the kernel's context switch, which is one), so a light side's store before its
/// barrier is visible here, or that side's load after its barrier sees this side's store.
/// A few microseconds (an interrupt to each core running one of our threads).
pub(crate) fn heavy() {
    fence(Ordering::SeqCst);
    if expedited() {
        // Registered, so the command cannot fail (EINVAL and EPERM are for an unknown command
        // and an unregistered process).
        let done = membarrier(PRIVATE_EXPEDITED);
        debug_assert!(done.is_ok(), "membarrier: {done:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// The store-buffering litmus test that the invariant is about: one thread stores `x`,
    /// runs [`Light::fence`] and loads `y`; the other stores `y`, runs [`heavy`] and loads `x`. In no
    /// round may both loads miss the other's store. (With a compiler barrier in place of
    /// `heavy`, both missed in 2320 of the 20 000 rounds: x86's store buffer.)
    #[test]
    fn light_and_heavy_keep_a_store_before_the_other_sides_load() {
        const ROUNDS: usize = 20_000;
        let (x, y, arrived) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        let side = |mine: &AtomicUsize, theirs: &AtomicUsize, barrier: &dyn Fn()| {
            (1..=ROUNDS)
                .map(|r| {
                    // Both sides start round r once both have finished round r - 1.
                    while arrived.load(Ordering::Acquire) < 2 * (r - 1) {
                        std::hint::spin_loop();
                    }
                    mine.store(r, Ordering::Relaxed);
                    barrier();
                    let saw = theirs.load(Ordering::Relaxed) >= r;
                    arrived.fetch_add(1, Ordering::AcqRel);
                    saw
                })
                .collect::<Vec<bool>>()
        };
        let light = Light::new();
        let (light_saw, heavy_saw) = std::thread::scope(|s| {
            let a = s.spawn(|| side(&x, &y, &|| light.fence()));
            let b = s.spawn(|| side(&y, &x, &heavy));
            (a.join().unwrap(), b.join().unwrap())
        });
        let missed = light_saw
            .iter()
            .zip(&heavy_saw)
            .filter(|(a, b)| !**a && !**b)
            .count();
        assert!(
            missed == 0,
            "both loads missed in {missed} of {ROUNDS} rounds (expedited: {})",
            expedited()
        );
    }

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
