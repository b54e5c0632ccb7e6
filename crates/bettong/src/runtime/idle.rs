//! How an exchange drain waits when the lanes from the other shards are empty: pass again,
//! poll them on a short timer, or park.
//!
//! Why not just park: a park is dear on both sides. The drain runs a heavy `membarrier` (an
//! interrupt to every other core running this process, a busy shard among them); the
//! producer's next publish then writes to the doorbell (a `sendto`); and the executor, when
//! nothing else runs, goes to sleep behind glommio's own `membarrier`. A busy shard publishes
//! once per source turn (4096 messages), so a drain that parked whenever it found its lanes
//! empty parked about once per turn of the other shard, and each park cost that shard a
//! syscall and two interrupts. perf/peer `bettong-iter`, Market Spread on 2 shards over 24 M
//! messages:
//!
//! - both shards busy: the lane from the other shard was empty at about every second pass, in
//!   between two turns of this shard's own source: 1 300–1 500 parks per shard before either
//!   source had ended, about 4 000 `membarrier` calls per run in all (perf stat);
//! - one shard busy and the other idle (`--busy-shards 1`, what the end of every run is once
//!   the first source ends): 2 900 parks, 5 000 `membarrier` and 2 900 `sendto` calls, and the
//!   busy shard ran at 39–60 M msgs/s where, with the idle drain polling on the timer below
//!   instead, it ran at 61–90 M (runs of 3, alternating).
//!
//! So a drain that finds its lanes empty first passes again [`PASSES`] times, letting the
//! shard's other tasks run in between (a busy shard's source turn, after which the other shard
//! has usually published). Then, on a shard that spins (`--poll spin`, or `spin:MICROS` of at
//! least two timer periods), it looks again every [`POLL_EVERY`] on a timer, or at the shard's
//! next flush if that comes first, for as long as the executor would spin after the last work
//! (for ever, or MICROS after the lanes last delivered): still not parked, so the producers
//! ring nothing, and the executor, spinning through the timer, never sleeps. Then it parks.
//!
//! The window is the configured spin time and no longer: a drain that polled for 250 µs after
//! every delivery on the default `spin:10` ran the in-process 2-shard run 1.17× as fast (16
//! rounds, 13 above 1), and `bettong-tcp` on 2 shards 0.90× and 0.98× (two runs of 8 rounds, 1
//! and 3 above 1), where the harness's sender threads share this VM's two cores with the shards
//! and the spinning took their time. Spinning is what `--poll spin` asks for, so that is where it goes.
//!
//! A timer, not a pass: glommio polls its io_uring only when its task queues run dry (or its
//! preemption timer fires, 100 ms), so a drain that passed again and again would keep a TCP
//! source's completions waiting. With `--poll park` the drain never polls on a timer: each
//! one would put the executor to sleep and wake it.

use std::task::Poll as TaskPoll;
use std::time::Duration;

use crate::runtime::config::Poll;
use crate::runtime::shard::WaitList;

/// Empty passes before a drain does anything dearer. A pass with nothing else to run costs a
/// look at each lane and at the executor's queue, so a shard with nothing to do still parks
/// within a microsecond or two. Market Spread on 2 shards, parks before either source ended:
/// 0–376 with 1 pass, 6–73 with 2, 0–1 with 4 (3 runs each); 4 passes, no timer: 1.04× the
/// parking drain's msgs/s in 24 alternating rounds (16 above 1) and in 16 (10 above 1).
pub(crate) const PASSES: u32 = 4;

/// The timer a hot drain polls its lanes on. Under the executor's spin time (10 µs by
/// default), so that the executor spins through it rather than sleeping. With one shard idle,
/// 5 µs ran the busy shard at 61–90 M msgs/s and 2 µs at 67–81 M (3 runs each).
pub(crate) const POLL_EVERY: Duration = Duration::from_micros(5);

/// What a drain that found its lanes empty does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Lets the shard's other tasks run, then looks again.
    Pass,
    /// Looks again once this much time has passed, not parked.
    Poll(Duration),
    /// Parks until a producer publishes.
    Park,
}

/// One drain's record of its empty passes and of when its lanes last delivered.
///
/// **Invariant:** `empty` counts the passes since the last that delivered something or the
/// last park, and `last_data` is the engine time (ns) of the last pass that delivered, when
/// `window` is set (it is never read otherwise).
#[derive(Debug)]
pub(crate) struct Idle {
    empty: u32,
    last_data: u64,
    /// How long after the last delivery the drain polls (ns), as the shard's `--poll` says;
    /// `None`: never.
    window: Option<u64>,
}

impl Idle {
    /// The waits of a drain on a shard that polls as `poll` says, at engine time `now`: after
    /// its passes, on a timer for as long as the shard's executor would spin (`spin`: for
    /// ever, `spin:MICROS`: that long after the last delivery, if that is at least two timer
    /// periods, or the executor would sleep in between), then parked.
    pub(crate) fn new(poll: Poll, now: u64) -> Idle {
        let window = match poll {
            Poll::Park => None,
            Poll::Spin => Some(u64::MAX),
            Poll::SpinFor(d) if d >= 2 * POLL_EVERY => {
                Some(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            }
            Poll::SpinFor(_) => None,
        };
        Idle {
            empty: 0,
            last_data: now,
            window,
        }
    }

    /// A pass delivered something; `now` (the engine clock) is read only when the drain
    /// may poll on a timer.
    #[inline]
    pub(crate) fn delivered(&mut self, now: impl FnOnce() -> u64) {
        self.empty = 0;
        if self.window.is_some() {
            self.last_data = now();
        }
    }

    /// A pass found nothing: what to do next. `now` is read only after [`PASSES`] passes.
    pub(crate) fn next(&mut self, now: impl FnOnce() -> u64) -> Wait {
        if self.empty < PASSES {
            self.empty += 1;
            return Wait::Pass;
        }
        if let Some(window) = self.window {
            if now().saturating_sub(self.last_data) < window {
                return Wait::Poll(POLL_EVERY);
            }
        }
        self.empty = 0;
        Wait::Park
    }
}

/// A [`Wait::Poll`]: returns after `every` on a timer or when `pollers` (the shard's
/// [`ShardCore::pollers`](crate::runtime::shard::ShardCore::pollers), woken at every flush) is
/// woken, whichever comes first. The timer serves a shard with nothing else to run; the wake
/// serves one with a busy task, which keeps glommio's run queue from running dry and so the
/// timer from firing. The task is not parked meanwhile, so no producer rings for it.
pub(crate) async fn poll(every: Duration, pollers: &WaitList) {
    let mut waiting = None;
    let woken = std::future::poll_fn(|cx| {
        if waiting.is_some() {
            return TaskPoll::Ready(());
        }
        pollers.register(cx.waker());
        waiting = Some(cx.waker().clone());
        TaskPoll::Pending
    });
    futures_lite::future::or(glommio::timer::sleep(every), woken).await;
    // After the timer, no stale wake at the next flush (the task may have parked by then, and
    // would wake and park again).
    if let Some(waker) = waiting {
        pollers.forget(&waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    /// `PASSES` passes first in every mode; then, spinning for 250 µs, a timer until the lanes
    /// have been quiet that long, and a park after.
    #[test]
    fn passes_then_polls_for_the_spin_time_then_parks() {
        let mut idle = Idle::new(Poll::SpinFor(Duration::from_micros(250)), 0);
        idle.delivered(|| 1_000 * US);
        for _ in 0..PASSES {
            assert_eq!(
                idle.next(|| unreachable!("no clock before the passes")),
                Wait::Pass
            );
        }
        assert_eq!(idle.next(|| 1_000 * US), Wait::Poll(POLL_EVERY));
        assert_eq!(idle.next(|| 1_249 * US), Wait::Poll(POLL_EVERY));
        assert_eq!(idle.next(|| 1_250 * US), Wait::Park);
        // After a park: passes again, and still cold.
        for _ in 0..PASSES {
            assert_eq!(idle.next(|| unreachable!()), Wait::Pass);
        }
        assert_eq!(idle.next(|| 1_300 * US), Wait::Park);
        // Data again: hot again, passes first.
        idle.delivered(|| 2_000 * US);
        for _ in 0..PASSES {
            assert_eq!(idle.next(|| unreachable!()), Wait::Pass);
        }
        assert_eq!(idle.next(|| 2_001 * US), Wait::Poll(POLL_EVERY));
        // A pass that delivers resets the count.
        idle.delivered(|| 2_002 * US);
        assert_eq!(idle.next(|| unreachable!()), Wait::Pass);
    }

    /// A shard that parks, or spins for less than two timer periods (its executor would sleep
    /// between two looks), never polls on a timer, and never reads the clock; one that spins
    /// for ever polls for ever.
    #[test]
    fn parking_shards_never_poll() {
        for poll in [Poll::Park, Poll::SpinFor(Duration::from_micros(9))] {
            let mut idle = Idle::new(poll, 0);
            idle.delivered(|| unreachable!("{poll:?} reads no clock"));
            for _ in 0..3 {
                for _ in 0..PASSES {
                    assert_eq!(idle.next(|| unreachable!()), Wait::Pass);
                }
                assert_eq!(idle.next(|| unreachable!()), Wait::Park, "{poll:?}");
            }
        }
        let mut spin = Idle::new(Poll::Spin, 0);
        for _ in 0..PASSES {
            spin.next(|| unreachable!());
        }
        assert_eq!(spin.next(|| 1 << 60), Wait::Poll(POLL_EVERY));
    }
}
