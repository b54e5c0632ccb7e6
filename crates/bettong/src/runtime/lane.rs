//! A lane: what an exchange sends from one shard to another, as two rings side by side. The
//! data ring's slots hold the messages alone; the marks ring holds what changes between them
//! (a new [`Stamp`], a [`Control`] event), each mark with the data position it comes before.
//!
//! Why two rings: with the stamp and the event's tag in every slot, a 64-byte Market Spread
//! message took a 96-byte slot, and the cost of crossing is the cache lines the slots take
//! from the other core (slots of 128 bytes instead of 96 cost 5 ns more per message at
//! 2 shards, `perf/peer bettong-iter`). Stamps come in runs (one per TCP read, one per
//! `IterSource` turn), so a run costs one mark, and a message costs its own bytes.
//!
//! **Invariant**: every mark with `at <= p` is published before the data ring's tail reaches
//! `p` (the sender publishes its marks ring before its data ring, and never lets the data
//! ring publish alone while marks are pending), so a receiver that reads the data ring's tail
//! `t` and then the marks finds every mark that belongs before or at `t`.

use std::sync::Arc;
use std::task::{Context, Poll};

use crate::event::{Control, Event, Stamp};
use crate::runtime::doorbell::{Doorbell, Waiter};
use crate::runtime::ring::{self, Consumer, Park, Producer};
use crate::runtime::run::Run;
use crate::runtime::shard::Sender;

/// What changes at a data position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// The messages from here on carry this stamp.
    Stamp(Stamp),
    /// A control event, after the messages before here and before the ones from here on.
    Control(Control),
}

/// A change and the data position it comes before.
#[derive(Clone, Copy, Debug)]
struct Mark {
    at: usize,
    change: Change,
}

/// Creates a lane whose data ring holds at least `capacity` messages, and whose marks ring as
/// many marks (a source whose every message has its own event time makes a mark per message).
/// Parked tasks are woken through the doorbells as [`ring::channel_between`]'s are.
pub(crate) fn channel_between<T: Send>(
    capacity: usize,
    producer_bell: Option<&Arc<Doorbell>>,
    consumer_bell: Option<&Arc<Doorbell>>,
) -> (LaneSender<T>, LaneReceiver<T>) {
    let (data, data_rx) = ring::channel_between(capacity, producer_bell, consumer_bell);
    let (marks, marks_rx) = ring::channel_beside(&data, capacity);
    (
        LaneSender {
            marks,
            data,
            stamp: Stamp::default(),
        },
        LaneReceiver {
            data: data_rx,
            marks: marks_rx,
            stamp: Stamp::default(),
        },
    )
}

/// A lane without doorbells (tests, and tasks on ordinary threads).
#[cfg(test)]
pub(crate) fn channel<T: Send>(capacity: usize) -> (LaneSender<T>, LaneReceiver<T>) {
    channel_between(capacity, None, None)
}

/// The sending end of a lane.
pub(crate) struct LaneSender<T> {
    // Declared before `data`: a dropped sender publishes its marks first (see the invariant).
    marks: Producer<Mark>,
    data: Producer<T>,
    /// The stamp the receiver gives the next message: the last stamp marked.
    stamp: Stamp,
}

impl<T: Send> LaneSender<T> {
    /// Writes a message without publishing it; gives it back when a ring is full (after
    /// publishing what was pending, so that the receiver can make room).
    #[inline(always)]
    pub(crate) fn push_data(&mut self, msg: T, stamp: Stamp) -> Result<(), (T, Stamp)> {
        if stamp != self.stamp {
            let mark = Mark {
                at: self.data.position(),
                change: Change::Stamp(stamp),
            };
            if self.marks.try_push(mark).is_err() {
                self.publish();
                return Err((msg, stamp));
            }
            // Marked even if the message does not fit now: the mark stands at the position
            // where the message will go.
            self.stamp = stamp;
        }
        self.data.try_push(msg).map_err(|msg| {
            self.publish();
            (msg, stamp)
        })
    }

    /// Writes the messages of `run`, all stamped `stamp`, without publishing them: the stamp is
    /// marked once. Stops at the first message that does not fit and gives it back (after
    /// publishing what was pending), leaving the rest in `run`.
    #[inline(always)]
    pub(crate) fn push_run(
        &mut self,
        run: &mut impl Iterator<Item = T>,
        stamp: Stamp,
    ) -> Result<(), T> {
        let Some(first) = run.next() else {
            return Ok(());
        };
        self.push_data(first, stamp).map_err(|(msg, _)| msg)?;
        if self.data.push_many(run) {
            return Ok(());
        }
        match run.next() {
            None => Ok(()),
            Some(msg) => {
                self.publish();
                Err(msg)
            }
        }
    }

    /// Writes a control event without publishing it; gives it back when the marks ring is full
    /// (after publishing what was pending, so that the receiver can make room).
    pub(crate) fn push_control(&mut self, control: Control) -> Result<(), Control> {
        let mark = Mark {
            at: self.data.position(),
            change: Change::Control(control),
        };
        self.marks.try_push(mark).map_err(|_| {
            self.publish();
            control
        })
    }
}

impl<T: Send> Sender for LaneSender<T> {
    type Item = Event<T>;

    #[inline(always)]
    fn push(&mut self, item: Event<T>) -> Result<(), Event<T>> {
        match item {
            Event::Data(msg, stamp) => self
                .push_data(msg, stamp)
                .map_err(|(msg, stamp)| Event::Data(msg, stamp)),
            Event::Control(c) => self.push_control(c).map_err(Event::Control),
        }
    }

    fn publish(&mut self) {
        // Marks first: the invariant.
        self.marks.publish();
        self.data.publish();
    }

    fn has_pending(&self) -> bool {
        self.marks.has_pending() || self.data.has_pending()
    }

    fn poll_space(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Published here, so that neither ring's own wait publishes its ring alone.
        self.publish();
        if !self.data.has_space() {
            return self.data.poll_space(cx);
        }
        self.marks.poll_space(cx)
    }

    fn close(&mut self) {
        self.marks.close();
        self.data.close();
    }
}

/// The receiving end of a lane.
pub(crate) struct LaneReceiver<T> {
    data: Consumer<T>,
    marks: Consumer<Mark>,
    /// The stamp of the next message.
    stamp: Stamp,
}

impl<T: Send> LaneReceiver<T> {
    /// Hands every published message to `data` (in runs of messages that share a stamp, where
    /// they lie in the ring) and every control event to `control`, in the order they were sent; stops after a control event for which `control` returns false
    /// (what follows stays for the next call). Returns how many it handed over.
    pub(crate) fn drain_until(
        &mut self,
        mut data: impl FnMut(Run<'_, T>, Stamp),
        mut control: impl FnMut(Control) -> bool,
    ) -> usize {
        // The invariant: every mark at or before `end` is visible once `end` is read.
        let end = self.data.published();
        let mut handed = 0;
        loop {
            let mark = self.marks.peek().copied().filter(|m| m.at <= end);
            let upto = mark.map_or(end, |m| m.at);
            let stamp = self.stamp;
            handed += self.data.drain_runs_before(upto, |run| data(run, stamp));
            let Some(mark) = mark else {
                return handed;
            };
            self.marks.pop();
            match mark.change {
                Change::Stamp(s) => self.stamp = s,
                Change::Control(c) => {
                    handed += 1;
                    if !control(c) {
                        return handed;
                    }
                }
            }
        }
    }

    /// True once the sender has closed (or dropped) its end and everything it sent has been
    /// taken.
    pub(crate) fn is_finished(&self) -> bool {
        // The data ring closes after the marks ring: closed data means closed marks.
        self.data.is_finished() && self.marks.is_empty()
    }
}

impl<T: Send> Park for LaneReceiver<T> {
    /// Something to take: a message, or a mark that belongs before the published messages'
    /// end (a mark ahead of that end waits for its data ring's publish, which follows at once:
    /// the invariant), or a closed sender.
    fn is_ready(&self) -> bool {
        let end = self.data.published();
        end != self.data.position()
            || self.marks.peek().is_some_and(|m| m.at <= end)
            || self.data.is_closed()
    }

    fn waiter(&self) -> &Waiter {
        // The marks ring shares it (`ring::channel_beside`).
        self.data.waiter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ns: u64) -> Stamp {
        Stamp {
            ingest_ns: ns,
            event_ns: ns,
        }
    }

    /// Everything a receiver hands over, as text, in order.
    fn take<T: Send + std::fmt::Debug>(rx: &mut LaneReceiver<T>, out: &mut Vec<String>) {
        let out = std::cell::RefCell::new(out);
        rx.drain_until(
            |run, s| {
                for m in run {
                    out.borrow_mut().push(format!("{m:?}@{}", s.ingest_ns));
                }
            },
            |c| {
                out.borrow_mut().push(format!("{c:?}"));
                true
            },
        );
    }

    /// Messages keep their stamps, and control events their places among the messages, across
    /// runs of equal stamps, stamps that change every message, and controls with no message
    /// after them.
    #[test]
    fn messages_stamps_and_controls_arrive_in_order() {
        let (mut tx, mut rx) = channel::<u32>(16);
        let sent = [
            Event::Data(1, Stamp::default()),
            Event::Data(2, stamp(5)),
            Event::Data(3, stamp(5)),
            Event::Control(Control::Watermark(7)),
            Event::Data(4, stamp(6)),
            Event::Data(5, stamp(7)),
            Event::Control(Control::Barrier(1)),
            Event::Control(Control::End),
        ];
        for e in sent {
            assert!(tx.push(e).is_ok());
        }
        tx.publish();
        let mut got = Vec::new();
        take(&mut rx, &mut got);
        assert_eq!(
            got,
            [
                "1@0",
                "2@5",
                "3@5",
                "Watermark(7)",
                "4@6",
                "5@7",
                "Barrier(1)",
                "End"
            ]
        );
        assert!(!rx.is_finished());
        tx.close();
        assert!(rx.is_finished());
    }

    /// `drain_until` stops after the control event it is told to stop at; the rest waits.
    #[test]
    fn a_drain_stops_after_the_control_it_is_told_to() {
        let (mut tx, mut rx) = channel::<u32>(8);
        for e in [
            Event::Data(1, stamp(1)),
            Event::Control(Control::Barrier(3)),
            Event::Data(2, stamp(2)),
        ] {
            assert!(tx.push(e).is_ok());
        }
        tx.publish();
        let mut got = Vec::new();
        let n = rx.drain_until(|run, _| got.extend(run), |c| c != Control::Barrier(3));
        assert_eq!((n, got.as_slice()), (2, [1].as_slice()));
        let n = rx.drain_until(
            |run, s| got.extend(run.map(|m| m * 10 + s.ingest_ns as u32)),
            |_| true,
        );
        assert_eq!((n, got.as_slice()), (1, [1, 22].as_slice()));
    }

    /// A full data ring gives the message back and publishes what was pending, marks first;
    /// a full marks ring gives the event back. Nothing is published out of order: a receiver
    /// draining between the sends sees every message with its own stamp.
    #[test]
    fn full_rings_give_events_back_without_reordering() {
        let (mut tx, mut rx) = channel::<u32>(2);
        let mut got = Vec::new();
        let mut pending = std::collections::VecDeque::new();
        for i in 0..40u32 {
            // A new stamp every third message, a watermark every fifth.
            pending.push_back(Event::Data(i, stamp(u64::from(i / 3))));
            if i % 5 == 4 {
                pending.push_back(Event::Control(Control::Watermark(u64::from(i))));
            }
            while let Some(e) = pending.pop_front() {
                if let Err(e) = tx.push(e) {
                    pending.push_front(e);
                    tx.publish();
                    take(&mut rx, &mut got);
                }
            }
        }
        tx.publish();
        take(&mut rx, &mut got);
        let mut want = Vec::new();
        for i in 0..40u32 {
            want.push(format!("{i}@{}", i / 3));
            if i % 5 == 4 {
                want.push(format!("Watermark({i})"));
            }
        }
        assert_eq!(got, want);
    }

    /// A receiver is ready for a published message, for a control published alone, and for a
    /// closed sender; not for a mark that belongs after a message still unpublished (a
    /// dropped sender closes its marks ring a moment before its data ring; simulated here),
    /// which would otherwise keep a drain task polling without end.
    #[test]
    fn readiness() {
        let (mut tx, rx) = channel::<u32>(4);
        assert!(!rx.is_ready());
        assert!(tx.push_control(Control::Idle).is_ok());
        tx.publish();
        assert!(rx.is_ready(), "a control alone");
        let (mut tx, mut rx) = channel::<u32>(4);
        assert!(tx.push_data(1, stamp(9)).is_ok());
        assert!(tx.push_data(2, stamp(10)).is_ok());
        tx.marks.publish();
        // The first stamp belongs at position 0, where the next message will be: taken.
        let mut got = Vec::new();
        take(&mut rx, &mut got);
        assert!(got.is_empty());
        assert!(
            !rx.is_ready(),
            "the stamp of message 2, which is not published"
        );
        tx.publish();
        assert!(rx.is_ready());
        take(&mut rx, &mut got);
        assert_eq!(got, ["1@9", "2@10"]);
        assert!(!rx.is_ready());
        drop(tx);
        assert!(rx.is_ready() && rx.is_finished());
    }

    /// Two threads, tiny rings, both sides parking on their shared spots: every message
    /// arrives once, in order, with its stamp, and every control in its place.
    #[test]
    fn cross_thread_with_parking() {
        const N: u32 = 100_000;
        let (mut tx, mut rx) = channel::<u32>(8);
        let producer = std::thread::spawn(move || {
            futures_lite::future::block_on(async move {
                let mut i = 0;
                let mut next = Some(Event::Data(0, stamp(0)));
                while let Some(e) = next.take() {
                    match tx.push(e) {
                        Ok(()) => {
                            i += 1;
                            next = (i < N).then(|| {
                                if i % 7 == 0 {
                                    Event::Control(Control::Watermark(u64::from(i)))
                                } else {
                                    Event::Data(i, stamp(u64::from(i / 4)))
                                }
                            });
                            if i % 5 == 0 {
                                tx.publish();
                            }
                        }
                        Err(e) => {
                            next = Some(e);
                            std::future::poll_fn(|cx| tx.poll_space(cx)).await;
                        }
                    }
                }
                tx.close();
            })
        });
        futures_lite::future::block_on(async move {
            let expect = std::cell::Cell::new(0u32);
            loop {
                std::future::poll_fn(|cx| {
                    ring::poll_any_ready(std::slice::from_mut(&mut rx), cx, |r| Some(r))
                })
                .await;
                rx.drain_until(
                    |run, s| {
                        for m in run {
                            let e = expect.get();
                            assert_eq!((m, s), (e, stamp(u64::from(e / 4))));
                            expect.set(e + 1);
                        }
                    },
                    |c| {
                        let e = expect.get();
                        assert_eq!(c, Control::Watermark(u64::from(e)));
                        expect.set(e + 1);
                        true
                    },
                );
                if rx.is_finished() {
                    break;
                }
            }
            assert_eq!(expect.get(), N);
        });
        producer.join().unwrap();
    }
}
