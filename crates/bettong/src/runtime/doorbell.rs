//! Waking a task on another shard.
//!
//! A glommio task's waker can be called from another thread, but glommio's cross-thread wake-up
//! checks whether the target executor is going to sleep with relaxed atomics on both sides, so
//! a wake-up can be missed until the executor's next timer fires (~100 ms; seen as p99.9
//! outliers in `bench market-spread`). A shard therefore has a doorbell: one end of a
//! socketpair that the shard reads through its own io_uring, where a completion cannot be lost.
//! Another thread that must wake a task on the shard marks the task's [`Waiter`] as rung and
//! writes one byte; the shard's doorbell task reads it and wakes the rung waiters locally.
//!
//! The bell is rung only when the waiter has said it is parked, so two busy shards exchange no
//! wake-ups at all.

use std::future::Future;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Context;

use atomic_waker::AtomicWaker;
use futures_lite::AsyncReadExt;

use super::membarrier;

/// One shard's doorbell.
pub struct Doorbell {
    ring_end: UnixStream,
    read_end: Mutex<Option<UnixStream>>,
    /// Weak: a waiter lives as long as the ring or task that parks on it, and a doorbell must
    /// not keep it (nor, through the waiter's own reference, itself) alive. Dead entries are
    /// pruned at each ring, so the list stays as long as the live waiters.
    waiters: Mutex<Vec<Weak<Waiter>>>,
    /// Raised by every ring, lowered by the shard as it wakes the rung waiters: lets the
    /// shard's own busy tasks answer the bell (see [`answer`](Self::answer)) without waiting
    /// for its reactor to read the byte.
    pending: AtomicBool,
    /// The read end again, for tests that look at what the shard has not read yet.
    #[cfg(test)]
    peek_end: UnixStream,
    /// Raised while the serve task waits on its read (its last poll returned `Pending` from
    /// the read), for tests that must ring only then.
    #[cfg(test)]
    reading: AtomicBool,
}

impl Doorbell {
    /// A new doorbell; its shard must run [`serve`](Self::serve).
    pub fn new() -> io::Result<Arc<Doorbell>> {
        let (ring_end, read_end) = UnixStream::pair()?;
        // A full socket buffer means a wake-up is already pending: never block the ringer.
        ring_end.set_nonblocking(true)?;
        read_end.set_nonblocking(true)?;
        Ok(Arc::new(Doorbell {
            #[cfg(test)]
            peek_end: read_end.try_clone()?,
            #[cfg(test)]
            reading: AtomicBool::new(false),
            ring_end,
            read_end: Mutex::new(Some(read_end)),
            waiters: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
        }))
    }

    fn ring(&self) {
        // After the waiter's `rung` store (see `Waiter::wake_if_parked`): whoever sees this
        // flag also sees which waiter rang.
        self.pending.store(true, Ordering::Release);
        // WouldBlock means unread bytes are waiting, so the shard will look anyway.
        let _ = (&self.ring_end).write(&[1]);
    }

    /// Wakes the rung waiters now if the bell rang since the last look; called by the shard's
    /// busy tasks after each batch (through `ShardCore::flush`), on the shard that serves
    /// this doorbell.
    ///
    /// Why: a shard reads its doorbell through its io_uring, and glommio polls the ring only
    /// when its task queue runs dry or its preemption timer (100 ms) fires. A shard kept busy
    /// by a source that always has data never runs dry, so a ring task that had parked on it
    /// (an exchange drain whose ring had been empty) slept up to 100 ms while its ring filled
    /// and the other shard paused: `bench market-spread` on 2 shards ran one feed at a time,
    /// with start-to-end p99 at 96–99 ms. The byte is still written, for a shard that sleeps.
    #[inline]
    pub(crate) fn answer(&self) {
        if self.pending.load(Ordering::Relaxed) {
            self.wake_rung();
        }
    }

    /// Wakes every waiter that rang.
    #[cold]
    fn wake_rung(&self) {
        // Lowered before the waiters are read: a ring after this store raises it again, and
        // one before it set its waiter's `rung` first (the acquire pairs with `ring`).
        self.pending.swap(false, Ordering::Acquire);
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters.retain(|w| match w.upgrade() {
            Some(w) => {
                if w.rung.swap(false, Ordering::AcqRel) {
                    w.waker.wake();
                }
                true
            }
            None => false,
        });
    }

    /// Reads the bell on the shard's executor and wakes every rung waiter, until the process
    /// ends. Must run on the shard whose tasks park on this doorbell's waiters.
    pub fn serve(self: &Arc<Self>) -> impl Future<Output = ()> + 'static {
        let bell = self.clone();
        let read_end = self
            .read_end
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        async move {
            let Some(read_end) = read_end else { return };
            // SAFETY: into_raw_fd hands over the open socket, which the glommio stream owns
            // and closes from now on.
            let mut stream =
                unsafe { glommio::net::UnixStream::from_raw_fd(read_end.into_raw_fd()) };
            let mut buf = [0u8; 64];
            loop {
                let mut read = std::pin::pin!(stream.read(&mut buf));
                // The rung waiters are woken before the byte is read, and this task steps
                // back behind them: glommio answers the readiness of the socket with a
                // `recvfrom` syscall inside the read's poll, and with the wake after the read
                // every parked task's wake-up waited for it (perf trace: one `recvfrom` per
                // wake cycle, between the readiness completion and the woken task). perf/peer
                // `bettong --rate 100000` (1 shard, `--poll park`, push -> callback), 8 and 6
                // alternating runs: p50 9.76 -> 7.92 µs and 10.00 -> 8.32 µs, no run of one
                // within the other's range.
                let outcome = std::future::poll_fn(|cx| {
                    #[cfg(test)]
                    bell.reading.store(false, Ordering::Release);
                    if bell.pending.load(Ordering::Relaxed) {
                        bell.wake_rung();
                        cx.waker().wake_by_ref();
                        return std::task::Poll::Pending;
                    }
                    let read = read.as_mut().poll(cx);
                    #[cfg(test)]
                    bell.reading.store(read.is_pending(), Ordering::Release);
                    read
                })
                .await;
                match outcome {
                    Ok(0) | Err(_) => return,
                    Ok(_) => bell.answer(),
                }
            }
        }
    }
}

/// A parking spot for one task: a flag the other side reads cheaply, and how to wake the task.
///
/// With a doorbell, the wake-up goes through the waiting shard's doorbell; without one (a task
/// on an ordinary thread), the waker is called directly.
pub struct Waiter {
    parked: AtomicBool,
    rung: AtomicBool,
    waker: AtomicWaker,
    bell: Option<Arc<Doorbell>>,
    /// The waking side's barrier (per publish); parking runs the heavy one.
    light: membarrier::Light,
}

impl Waiter {
    /// A waiter whose task runs on the shard that owns `bell` (or anywhere, with `None`).
    pub fn new(bell: Option<&Arc<Doorbell>>) -> Arc<Waiter> {
        let w = Arc::new(Waiter {
            parked: AtomicBool::new(false),
            rung: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            bell: bell.cloned(),
            light: membarrier::Light::new(),
        });
        if let Some(b) = bell {
            let mut list = b.waiters.lock().unwrap_or_else(|e| e.into_inner());
            // Prune waiters whose rings or tasks are gone, so that pushers and engines that
            // come and go leave nothing behind.
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(&w));
        }
        w
    }

    /// Records the task to wake and raises the flag. The caller re-checks its condition after
    /// this; the heavy barrier pairs with the light one in `wake_if_parked` (see
    /// [`membarrier`](super::membarrier)), so either the caller sees the other side's progress
    /// or the other side sees the flag. Parking is the rare side: a task parks when it has
    /// run out of work, the other side publishes after every batch.
    pub fn park(&self, cx: &mut Context<'_>) {
        self.raise(cx);
        membarrier::heavy();
    }

    /// The first half of [`park`](Self::park), for a task that parks on several waiters at
    /// once: raise each, run one `membarrier::heavy()`, then re-check every condition.
    pub(crate) fn raise(&self, cx: &mut Context<'_>) {
        self.waker.register(cx.waker());
        // Ordered before the re-check by the heavy barrier that must follow.
        self.parked.store(true, Ordering::Relaxed);
    }

    /// Lowers the flag after the re-check found the condition already met.
    pub fn unpark(&self) {
        self.parked.store(false, Ordering::Relaxed);
    }

    /// Called by the other side after making progress: wakes the task if it is parked.
    #[inline]
    pub fn wake_if_parked(&self) {
        self.light.fence();
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel) {
            match &self.bell {
                Some(bell) => {
                    self.rung.store(true, Ordering::Release);
                    bell.ring();
                }
                None => self.waker.wake(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waiters that are gone do not stay on the doorbell's list (every pusher and ring makes
    /// one; the list used to grow forever).
    #[test]
    fn dropped_waiters_leave_the_list() {
        let bell = Doorbell::new().unwrap();
        let keep = Waiter::new(Some(&bell));
        for _ in 0..100 {
            drop(Waiter::new(Some(&bell)));
        }
        let live = bell.waiters.lock().unwrap().len();
        assert!(live <= 2, "{live} entries for 1 live waiter");
        drop(keep);
        // The doorbell is not kept alive by its waiters' list.
        let weak = Arc::downgrade(&bell);
        drop(bell);
        assert!(weak.upgrade().is_none());
    }
    use std::sync::atomic::AtomicU64;

    /// A task on a glommio shard parks 2000 times and is woken each time from another thread
    /// through the doorbell; none of the wake-ups may be lost (the test would hang).
    #[test]
    fn wakes_a_parked_task_on_another_thread() {
        let bell = Doorbell::new().unwrap();
        let waiter = Waiter::new(Some(&bell));
        let turn = Arc::new(AtomicU64::new(0));
        let (w, t) = (waiter.clone(), turn.clone());
        let shard = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                glommio::spawn_local(bell.serve()).detach();
                for i in 0..2000u64 {
                    // Wait for the other thread to move the turn to odd, then hand it back.
                    wait_for_turn(&w, &t, 2 * i + 1, None).await;
                    t.store(2 * i + 2, Ordering::Release);
                }
            })
            .unwrap();
        for i in 0..2000u64 {
            while turn.load(Ordering::Acquire) != 2 * i {
                std::hint::spin_loop();
            }
            turn.store(2 * i + 1, Ordering::Release);
            waiter.wake_if_parked();
        }
        shard.join().unwrap();
    }

    /// Parks on `waiter` until `turn` reads `want`, raising `asleep` (when given) each time
    /// the task goes to sleep, after its last look at the turn.
    async fn wait_for_turn(
        waiter: &Waiter,
        turn: &AtomicU64,
        want: u64,
        asleep: Option<&AtomicBool>,
    ) {
        std::future::poll_fn(|cx| {
            if turn.load(Ordering::Acquire) == want {
                return std::task::Poll::Ready(());
            }
            waiter.park(cx);
            if turn.load(Ordering::Acquire) == want {
                waiter.unpark();
                return std::task::Poll::Ready(());
            }
            if let Some(asleep) = asleep {
                asleep.store(true, Ordering::Release);
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// The bytes waiting in `socket`, left there (a peek).
    fn unread(socket: &UnixStream) -> usize {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 64];
        // SAFETY: `buf` is valid for writes of its length, and the descriptor is open while
        // `socket` is borrowed.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(n).unwrap_or(0)
    }

    /// A task parked on an idle shard is woken before the shard reads the bell's byte: when
    /// it runs, the byte is still unread (with the read first, each wake-up waited for a
    /// `recvfrom` syscall). Over 200 wake-ups, and none is lost.
    #[test]
    fn a_rung_task_runs_before_the_bell_is_read() {
        let bell = Doorbell::new().unwrap();
        let waiter = Waiter::new(Some(&bell));
        let turn = Arc::new(AtomicU64::new(0));
        // Raised by the task as it goes to sleep (after its last look at the turn), so that
        // every wake-up below goes through the bell.
        let asleep = Arc::new(AtomicBool::new(false));
        let (w, t, a, b) = (waiter.clone(), turn.clone(), asleep.clone(), bell.clone());
        let shard = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                glommio::spawn_local(b.serve()).detach();
                let mut unread_at_wake = 0;
                for i in 0..200u64 {
                    wait_for_turn(&w, &t, 2 * i + 1, Some(&a)).await;
                    if unread(&b.peek_end) > 0 {
                        unread_at_wake += 1;
                    }
                    a.store(false, Ordering::Relaxed);
                    t.store(2 * i + 2, Ordering::Release);
                }
                unread_at_wake
            })
            .unwrap();
        for i in 0..200u64 {
            // Also once the serve task waits on its read again: a ring between its look at
            // the `pending` flag and its read of the last wake-up's byte would be read with
            // that byte, before its task runs (harmless, but not what this test looks at;
            // in a release build, whose host spins faster, that was 1 to 73 of 200).
            while turn.load(Ordering::Acquire) != 2 * i
                || !asleep.load(Ordering::Acquire)
                || !bell.reading.load(Ordering::Acquire)
            {
                std::hint::spin_loop();
            }
            turn.store(2 * i + 1, Ordering::Release);
            waiter.wake_if_parked();
        }
        let unread = shard.join().unwrap();
        assert_eq!(
            unread, 200,
            "of 200 wake-ups of a sleeping task, {unread} found the bell's byte still unread"
        );
    }

    /// A shard whose tasks never run dry still wakes a task parked on its doorbell when a busy
    /// task answers the bell: the shard's preemption timer is an hour, so its reactor never
    /// reads the byte while the busy task runs, and only `answer` can deliver the wake-up.
    #[test]
    fn a_busy_shard_answers_its_bell_without_its_reactor() {
        let bell = Doorbell::new().unwrap();
        let waiter = Waiter::new(Some(&bell));
        let parked = Arc::new(AtomicBool::new(false));
        let (w, p) = (waiter.clone(), parked.clone());
        let shard = glommio::LocalExecutorBuilder::default()
            .preempt_timer(std::time::Duration::from_secs(3600))
            .spawn(move || async move {
                glommio::spawn_local(bell.serve()).detach();
                let woken = std::rc::Rc::new(std::cell::Cell::new(false));
                let done = woken.clone();
                glommio::spawn_local(async move {
                    let mut first = true;
                    std::future::poll_fn(|cx| {
                        if first {
                            first = false;
                            w.park(cx);
                            p.store(true, Ordering::Release);
                            return std::task::Poll::Pending;
                        }
                        std::task::Poll::Ready(())
                    })
                    .await;
                    done.set(true);
                })
                .detach();
                // The busy task: always ready again, so the task queue never runs dry.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                while !woken.get() && std::time::Instant::now() < deadline {
                    bell.answer();
                    glommio::executor().yield_now().await;
                }
                woken.get()
            })
            .unwrap();
        while !parked.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        waiter.wake_if_parked();
        assert!(
            shard.join().unwrap(),
            "the parked task was not woken within 20 s while the shard stayed busy"
        );
    }
}
