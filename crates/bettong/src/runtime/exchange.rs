//! The exchange: an edge that routes each message by key to the shard that owns the key's
//! group. On the sending shard it is the operator's entry ([`Exchange`]): a local key is a
//! direct call, a remote one goes into that shard's lane (`runtime::lane`) through an
//! [`Outbox`]. On the receiving shard a drain task per exchange edge feeds the lanes' events
//! into the operator, each lane on its own input port.
//!
//! Control events are broadcast: into the local port and into every outgoing lane, so every
//! shard's operator hears every input. A lane whose port is *held* (it delivered a barrier the
//! other ports have not) is not drained until the barrier is forwarded: alignment.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::Poll;

use crate::event::{Control, Event, Stamp};
use crate::metrics::now_ns;
use crate::ops::{Downstream, Input};
use crate::runtime::idle::{self, Idle, Wait};
use crate::runtime::lane::{LaneReceiver, LaneSender};
use crate::runtime::ring;
use crate::runtime::run::Run;
use crate::runtime::shard::{
    yield_after_batch, Gauge, LocalFuture, Notify, Publish, ShardCore, Spill, WaitList,
};
use crate::runtime::split;

/// This shard's sending side of one exchange towards one other shard.
pub(crate) struct Outbox<T: Send> {
    pub(crate) spill: Spill<LaneSender<T>>,
}

impl<T: Send + 'static> Outbox<T> {
    /// Queues one event; it is published with the rest of its batch by `ShardCore::flush`.
    #[inline]
    fn send(&self, item: Event<T>) {
        self.spill.send(item, false, true);
    }

    /// Moves spilled events into the ring as the consumer makes room; on `closing`, empties
    /// the overflow and closes the ring.
    pub(crate) async fn mover(self: Rc<Self>, closing: Rc<Notify>, relief: Rc<WaitList>) {
        let closed = Cell::new(false);
        loop {
            futures_lite::future::or(self.spill.spilled(), async {
                closing.notified().await;
                closed.set(true);
            })
            .await;
            while !self.spill.move_overflow() {
                self.spill.space().await;
            }
            self.spill.relieve(&relief);
            if closed.get() {
                self.spill.close();
                return;
            }
        }
    }
}

impl<T: Send + 'static> Publish for Outbox<T> {
    fn publish(&self) {
        self.spill.publish_pending()
    }
}

/// The entry of an exchange edge on the sending shard. `R` is the route (message to shard):
/// a type parameter rather than a boxed closure, so that it is inlined into `data`.
///
/// `data` branches on "is the key mine?", and with keys spread over the shards that branch
/// goes either way at random: cachegrind's branch simulation counts 0.48 mispredictions per
/// message in `data` for Market Spread on 2 shards (perf/peer `bettong-iter`, 1 M messages),
/// against none when every key is local. Staging every message for its shard instead (a
/// fixed buffer per destination, this shard's too, delivered at each flush: no branch on the
/// destination, timely's way) took those to 0.02, and cost more than it saved: perf samples of
/// the exchange per sample of `StateOp::data` rose from 1.04 to 1.17 with half the keys
/// crossing and from 0.50 to 0.96 with none (3 and 4 runs each; the message is copied into
/// the stage and out again, and every stage address waits for the route). Throughput moved
/// within the noise (15 alternating rounds: medians 24.4 -> 25.0 M msgs/s).
///
/// A source that pulls batches (an `IterSource`) hands them to `data_batch` instead, which
/// routes a whole chunk first and then delivers it in two runs, with no branch on the
/// destination and no copy (`runtime::split`): the exchange's mispredictions 0.687 -> 0.226
/// per message on 2 shards.
pub(crate) struct Exchange<T: Send, R> {
    pub(crate) route: R,
    pub(crate) me: usize,
    /// By destination shard; `None` for this shard.
    pub(crate) outboxes: Vec<Option<Rc<Outbox<T>>>>,
    /// The operator's local input (its local port).
    pub(crate) local: Downstream<T>,
    /// The operator's "some port is held" flag (`Ports::any_held_flag`), read per local
    /// message instead of asking the operator for its ports through a virtual call; `None`
    /// for an operator without ports.
    pub(crate) any_held: Option<Rc<Cell<bool>>>,
    /// What came for the local port after its barrier while the other ports had not delivered
    /// theirs: it waits here, in order, until the barrier is forwarded (a local input cannot
    /// stop being called the way a ring stops being drained, so it is held here instead).
    pub(crate) held: RefCell<VecDeque<Event<T>>>,
}

impl<T: Send + 'static, R: Fn(&T) -> usize> Input<T> for Exchange<T, R> {
    #[inline]
    fn data(&self, msg: T, stamp: Stamp) {
        let dst = (self.route)(&msg);
        if dst == self.me {
            // The common case calls the operator directly: no `Event` is built (moving the
            // message into one and out again, and asking the operator whether its port is
            // held, were 31 of the 41 instructions per message spent here, perf/callgrind.sh).
            if self.local_open() {
                self.local.data(msg, stamp);
            } else {
                self.local(Event::Data(msg, stamp));
            }
            return;
        }
        self.outbox(dst).spill.send_data(msg, stamp);
    }

    /// A batch is delivered by `runtime::split`: this shard's messages of each chunk to the
    /// operator, then the others into their lanes, with no branch on the destination.
    fn data_batch(&self, batch: &mut Vec<T>, stamp: Stamp) {
        if !self.splits() {
            for msg in batch.drain(..) {
                self.data(msg, stamp);
            }
            return;
        }
        let shards = self.outboxes.len();
        split::deliver(batch, self.me, shards, &self.route, self.to(stamp));
    }

    /// A run (a pusher's ring, drained where it lies) is split as a batch is, in place.
    fn data_run(&self, run: Run<'_, T>, stamp: Stamp) {
        if !self.splits() {
            for msg in run {
                self.data(msg, stamp);
            }
            return;
        }
        let shards = self.outboxes.len();
        split::deliver_run(run, self.me, shards, &self.route, self.to(stamp));
    }

    fn batches(&self) -> bool {
        true
    }

    fn control(&self, _port: usize, event: Control) {
        self.local(Event::Control(event));
        for outbox in self.outboxes.iter().flatten() {
            outbox.send(Event::Control(event));
        }
    }
}

impl<T: Send + 'static, R> Exchange<T, R> {
    /// The outbox towards another shard `dst`.
    #[inline(always)]
    fn outbox(&self, dst: usize) -> &Outbox<T> {
        match self.outboxes.get(dst) {
            Some(Some(outbox)) => outbox,
            _ => unreachable!("route() returned shard {dst} out of range"),
        }
    }

    /// Where a split of messages stamped `stamp` hands them on: this shard's own straight to
    /// the operator, the others into their lanes.
    #[inline(always)]
    fn to(&self, stamp: Stamp) -> impl split::Deliver<T> + '_ {
        let operator = &self.local.data;
        (
            move |run: Run<'_, T>| operator.data_run(run, stamp),
            move |dst, msg| self.outbox(dst).spill.send_data(msg, stamp),
            move |dst, run: Run<'_, T>| self.outbox(dst).spill.send_run(run, stamp),
        )
    }

    /// True when a batch or a run may be split (`runtime::split`), its local messages going
    /// straight to the operator's `data_run`; false in the rare cases where they go one at a
    /// time through `data`, in order behind what is held: the local port is held (a
    /// checkpoint barrier waits for the other ports), or the operator is a merge holding
    /// this edge's input.
    ///
    /// Nothing run during a split can hold the local port or this edge (that takes a control
    /// event, and control events come from tasks, never from the data calls of this one), so
    /// the operator is then called directly, with no look at either per message. With that,
    /// the route cache out of its `Option` and the route pass's bound checked once: Market
    /// Spread on 2 shards 284.4 -> 277.0 instructions per message, 264.0 -> 256.1 with
    /// nothing crossing (perf/peer `bettong-iter` under callgrind).
    #[inline]
    fn splits(&self) -> bool {
        self.local_open() && !self.local.held.get()
    }

    /// True when a local message may go straight to the operator: no port of it is held and
    /// nothing held waits to go first.
    #[inline]
    fn local_open(&self) -> bool {
        let may_hold = self.any_held.as_ref().is_none_or(|f| f.get());
        !(may_hold && self.local_held()) && self.held.borrow().is_empty()
    }

    /// True while the operator holds the local port (it delivered a barrier that other ports
    /// have not).
    fn local_held(&self) -> bool {
        let l = &self.local;
        l.ctl.ports().is_some_and(|p| p.is_held(l.port))
    }

    /// Delivers `event` to the local port, or keeps it behind a held barrier.
    #[inline]
    fn local(&self, event: Event<T>) {
        if self.local_open() {
            match event {
                Event::Data(m, s) => self.local.data(m, s),
                Event::Control(c) => self.local.control(c),
            }
            return;
        }
        self.held.borrow_mut().push_back(event);
        self.release();
    }

    /// Delivers what waited for the local port, in order, while the port is not held.
    pub(crate) fn release(&self) {
        while !self.local_held() {
            let Some(event) = self.held.borrow_mut().pop_front() else {
                return;
            };
            match event {
                Event::Data(m, s) => self.local.data(m, s),
                Event::Control(c) => self.local.control(c),
            }
        }
    }

    /// Runs until the local port has ended with nothing left waiting: delivers what was held
    /// as soon as the operator releases the port, and publishes what that sent on (to other
    /// shards' rings), as every task that runs data through operators does.
    pub(crate) async fn releaser(self: Rc<Self>, core: Rc<ShardCore>) {
        loop {
            self.release();
            core.flush();
            let done = self.held.borrow().is_empty()
                && self
                    .local
                    .ctl
                    .ports()
                    .is_none_or(|p| p.is_ended(self.local.port));
            if done {
                return;
            }
            std::future::poll_fn(|cx| {
                let ports = self.local.ctl.ports();
                if let Some(p) = ports {
                    p.on_release(cx.waker());
                }
                let ended = ports.is_none_or(|p| p.is_ended(self.local.port));
                let waiting = !self.held.borrow().is_empty();
                if (waiting && !self.local_held()) || (ended && !waiting) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }
}

/// The receiving side of one exchange edge on one shard: what the shard's stop sequence needs.
pub(crate) struct ExchangeRuntime {
    /// Position of the target operator in the plan's topological order (stop order).
    pub(crate) order: usize,
    /// Drains the rings from other shards into the operator; ends when they are closed.
    pub(crate) drain: Option<LocalFuture>,
    /// Move overflow into the outgoing rings; end (closing the rings) once `closing` fires.
    pub(crate) movers: Vec<LocalFuture>,
    pub(crate) closing: Vec<Rc<Notify>>,
}

/// Runs events that other shards routed here into the operator, until every other shard has
/// closed its lane to us. Each lane arrives on the port paired with it. When the lanes are
/// empty it passes again, polls them on a timer or parks, as [`Idle`] says.
pub(crate) async fn drain<T: Send + 'static>(
    mut rings: Vec<(LaneReceiver<T>, usize)>,
    target: Rc<dyn Input<T>>,
    gauges: Rc<[Gauge]>,
    core: Rc<ShardCore>,
) {
    // The operator as a plain `&dyn`, taken once: a call through the `Rc` worked out where
    // the value sits in the `Rc`'s allocation (from the vtable's alignment) on every event.
    let target: &dyn Input<T> = &*target;
    let mut idle = Idle::new(core.config.poll, now_ns());
    loop {
        let mut drained = 0;
        for (ring, port) in rings.iter_mut() {
            let port = *port;
            if held(target, port) {
                continue;
            }
            drained += ring.drain_until(
                |run, stamp| target.data_run(run, stamp),
                |c| {
                    target.control(port, c);
                    // Stop at a barrier the other ports have not delivered yet.
                    !held(target, port)
                },
            );
        }
        if drained == 0 {
            // Forget the rings whose producer has closed and that are empty: they will never
            // carry anything again, and a closed ring's `poll_ready` is always ready, so keeping
            // one in the wait below would turn it into a busy loop that never yields. With three
            // or more shards that loop starved this shard's own stop task, which therefore never
            // closed this shard's rings to the others, whose drains then spun the same way (the
            // SIGTERM hang at 3+ shards).
            rings.retain(|(r, _)| !r.is_finished());
            if rings.is_empty() {
                return;
            }
            match idle.next(now_ns) {
                Wait::Pass => {
                    yield_after_batch().await;
                    continue;
                }
                Wait::Poll(every) => {
                    idle::poll(every, &core.pollers).await;
                    continue;
                }
                Wait::Park => {}
            }
            #[cfg(test)]
            tests::PARKS.with(|p| p.set(p.get() + 1));
            // Park until a producer publishes. With `--poll spin` the executor itself keeps
            // polling its io_uring instead of sleeping, so the doorbell's wake-up is picked up
            // at once. (Spinning here, in the task, would keep glommio from polling I/O at all
            // until its preemption timer fires.) A held ring is not polled (it may well have
            // data): the task waits for the operator to release its port instead.
            std::future::poll_fn(|cx| {
                let mut ready = false;
                for (_, port) in rings.iter() {
                    if held(target, *port) {
                        if let Some(p) = target.ports() {
                            p.on_release(cx.waker());
                        }
                        // Re-check after registering: the release may have just happened.
                        ready |= !held(target, *port);
                    }
                }
                if ready {
                    return Poll::Ready(());
                }
                ring::poll_any_ready(&mut rings, cx, |(ring, port)| {
                    (!held(target, *port)).then_some(ring)
                })
            })
            .await;
            continue;
        }
        idle.delivered(now_ns);
        core.flush();
        core.backpressure(&gauges).await;
        // After every pass: with data coming in on some ring all the time (many shards), this
        // task would otherwise never go back to the poll above.
        yield_after_batch().await;
    }
}

fn held<T>(target: &dyn Input<T>, port: usize) -> bool {
    target.ports().is_some_and(|p| p.is_held(port))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::ops::Ports;
    use crate::runtime::lane;
    use crate::runtime::shard::Sender;

    /// An operator that logs what reaches it, in order, and what its ports forward.
    struct Log {
        ports: Ports,
        seen: RefCell<Vec<String>>,
    }

    impl Input<u64> for Log {
        fn data(&self, msg: u64, _: Stamp) {
            self.seen.borrow_mut().push(format!("data {msg}"));
        }
        fn held_data(&self, port: usize, msg: u64, _: Stamp) {
            self.seen
                .borrow_mut()
                .push(format!("held data {msg} on {port}"));
        }
        fn control(&self, port: usize, event: Control) {
            for e in self.ports.align(port, event) {
                self.seen.borrow_mut().push(format!("forward {e:?}"));
            }
        }
        fn ports(&self) -> Option<&Ports> {
            Some(&self.ports)
        }
    }

    type LocalOnly = Exchange<u64, fn(&u64) -> usize>;

    /// A 1-shard exchange (every key local) into a logging operator with two ports: the
    /// local one and one that stands for a ring from another shard.
    fn local_only() -> (Rc<Log>, Rc<LocalOnly>) {
        let target = Rc::new(Log {
            ports: Ports::new(2),
            seen: RefCell::new(Vec::new()),
        });
        let input: Rc<dyn Input<u64>> = target.clone();
        let exchange = Rc::new(Exchange {
            route: (|_: &u64| 0) as fn(&u64) -> usize,
            me: 0,
            outboxes: vec![None],
            any_held: input.ports().map(Ports::any_held_flag),
            local: Downstream::to(input, 0, Rc::from([])),
            held: Default::default(),
        });
        (target, exchange)
    }

    thread_local! {
        /// How many times `drain` has parked on this thread.
        pub(super) static PARKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// Lets the drain task run until it has nothing left to do.
    async fn settle() {
        for _ in 0..20 {
            glommio::executor().yield_now().await;
        }
    }

    /// The local input of an exchange is held too: what this shard sends to the operator after
    /// its barrier waits until the other ports deliver theirs, then follows the forwarded
    /// barrier in order (a checkpoint must not see data from after its barrier).
    #[test]
    fn the_local_input_is_held_after_its_barrier() {
        glommio::LocalExecutor::default().run(async {
            let (target, exchange) = local_only();
            let core = ShardCore::for_test(0, 1);
            let releaser = glommio::spawn_local(exchange.clone().releaser(core));
            exchange.data(1, Stamp::default());
            exchange.control(0, Control::Barrier(3));
            exchange.data(2, Stamp::default());
            exchange.control(0, Control::Watermark(9));
            settle().await;
            assert_eq!(
                *target.seen.borrow(),
                ["data 1"],
                "2 waits behind the barrier"
            );
            // The ring port delivers its barrier: the barrier goes on, then what was held.
            target.control(1, Control::Barrier(3));
            settle().await;
            assert_eq!(
                *target.seen.borrow(),
                ["data 1", "forward Barrier(3)", "data 2"],
            );
            exchange.control(0, Control::End);
            target.control(1, Control::End);
            releaser.await;
            // (The held watermark reached the port in order; port 1 never sent one, so the
            // minimum over the ports never moved.)
            assert_eq!(
                *target.seen.borrow(),
                ["data 1", "forward Barrier(3)", "data 2", "forward End"],
            );
        });
    }

    /// A batch takes the same way as the messages one by one: delivered in order while the
    /// local port is open, and held behind the barrier, in order, while it is held.
    #[test]
    fn a_batch_is_held_after_the_barrier_like_single_messages() {
        glommio::LocalExecutor::default().run(async {
            let (target, exchange) = local_only();
            assert!(exchange.batches());
            let core = ShardCore::for_test(0, 1);
            let releaser = glommio::spawn_local(exchange.clone().releaser(core));
            let mut batch = vec![1, 2];
            exchange.data_batch(&mut batch, Stamp::default());
            assert!(batch.is_empty());
            exchange.control(0, Control::Barrier(3));
            batch.extend([3, 4]);
            exchange.data_batch(&mut batch, Stamp::default());
            assert!(batch.is_empty());
            settle().await;
            assert_eq!(*target.seen.borrow(), ["data 1", "data 2"]);
            target.control(1, Control::Barrier(3));
            settle().await;
            assert_eq!(
                *target.seen.borrow(),
                ["data 1", "data 2", "forward Barrier(3)", "data 3", "data 4"],
            );
            exchange.control(0, Control::End);
            target.control(1, Control::End);
            releaser.await;
        });
    }

    /// An exchange into a merge whose input it is holds nothing back itself, but its data must
    /// go to the merge's `held_data` while the edge's flag is up, in a batch as one by one: the
    /// batch path reads the flag once per batch, so this fails if it skipped it.
    #[test]
    fn a_batch_into_a_held_merge_edge_goes_to_the_merge() {
        let (target, exchange) = local_only();
        let mut batch = vec![1, 2];
        exchange.data_batch(&mut batch, Stamp::default());
        exchange.local.held.set(true);
        batch.extend([3, 4]);
        exchange.data_batch(&mut batch, Stamp::default());
        exchange.data(5, Stamp::default());
        exchange.local.held.set(false);
        batch.push(6);
        exchange.data_batch(&mut batch, Stamp::default());
        assert!(batch.is_empty());
        assert_eq!(
            *target.seen.borrow(),
            [
                "data 1",
                "data 2",
                "held data 3 on 0",
                "held data 4 on 0",
                "held data 5 on 0",
                "data 6"
            ]
        );
    }

    /// What the releaser delivers after a barrier is published at once: an operator that
    /// sends it on into a ring to another shard does not leave it waiting for some other task
    /// to flush (with the input quiet, none would).
    #[test]
    fn what_the_releaser_delivers_is_published() {
        struct Forward {
            ports: Ports,
            out: Rc<Outbox<u64>>,
        }
        impl Input<u64> for Forward {
            fn data(&self, msg: u64, stamp: Stamp) {
                self.out.send(Event::Data(msg, stamp));
            }
            fn control(&self, port: usize, event: Control) {
                self.ports.align(port, event);
            }
            fn ports(&self) -> Option<&Ports> {
                Some(&self.ports)
            }
        }
        glommio::LocalExecutor::default().run(async {
            let core = ShardCore::for_test(0, 2);
            let (tx, mut rx) = lane::channel::<u64>(8);
            let out = Rc::new(Outbox {
                spill: Spill::new(tx),
            });
            core.add_publisher(out.clone());
            let target = Rc::new(Forward {
                ports: Ports::new(2),
                out,
            });
            let input: Rc<dyn Input<u64>> = target.clone();
            let exchange = Rc::new(Exchange {
                route: |_: &u64| 0,
                me: 0,
                outboxes: vec![None],
                any_held: input.ports().map(Ports::any_held_flag),
                local: Downstream::to(input, 0, Rc::from([])),
                held: Default::default(),
            });
            let releaser = glommio::spawn_local(exchange.clone().releaser(core));
            exchange.control(0, Control::Barrier(1));
            exchange.data(5, Stamp::default());
            settle().await;
            let mut seen = Vec::new();
            let mut take = |rx: &mut LaneReceiver<u64>| {
                rx.drain_until(|run, _| seen.extend(run), |_| true);
            };
            take(&mut rx);
            target.control(1, Control::Barrier(1));
            settle().await;
            take(&mut rx);
            assert_eq!(seen, [5], "released, sent on and published");
            exchange.control(0, Control::End);
            target.control(1, Control::End);
            releaser.await;
        });
    }

    /// Shard 0 of 2 that polls as `poll` says.
    fn core_polling(poll: crate::runtime::config::Poll) -> Rc<ShardCore> {
        let config = crate::runtime::config::EngineConfig {
            poll,
            ..Default::default()
        };
        let bell = crate::runtime::doorbell::Doorbell::new().expect("a doorbell");
        Rc::new(ShardCore::new(0, 2, config, bell))
    }

    /// A drain of one lane into a logging operator, on shard 0 of 2 polling as `poll` says:
    /// the shard, the operator, the lane's sending end and the drain task.
    fn one_lane_drain(
        poll: crate::runtime::config::Poll,
    ) -> (Rc<ShardCore>, Rc<Log>, LaneSender<u64>, glommio::Task<()>) {
        let core = core_polling(poll);
        let target = Rc::new(Log {
            ports: Ports::new(2),
            seen: RefCell::new(Vec::new()),
        });
        let (tx, rx) = lane::channel::<u64>(8);
        let input: Rc<dyn Input<u64>> = target.clone();
        let task = glommio::spawn_local(drain(vec![(rx, 1)], input, Rc::from([]), core.clone()));
        (core, target, tx, task)
    }

    /// Every message `0..n` reached the operator, in order.
    fn assert_all_in_order(target: &Log, n: u64) {
        let want: Vec<String> = (0..n).map(|i| format!("data {i}")).collect();
        assert_eq!(*target.seen.borrow(), want);
    }

    /// A drain whose lane gets something at every second pass of the shard's tasks never
    /// parks (a park costs a `membarrier` here and a doorbell write on the other shard); once
    /// its lane stays empty it parks (`--poll park`: at once after its passes), and a publish
    /// wakes it. Nothing is lost or reordered either way.
    #[test]
    fn a_drain_parks_only_once_its_lanes_stay_empty() {
        glommio::LocalExecutor::default().run(async {
            let (_, target, mut tx, task) = one_lane_drain(crate::runtime::config::Poll::Park);
            let parks = || PARKS.with(|p| p.get());
            for i in 0..100 {
                assert!(tx.push(Event::Data(i, Stamp::default())).is_ok());
                tx.publish();
                // Two turns of this task: the drain takes `i` in the first and finds the lane
                // empty in the second.
                glommio::executor().yield_now().await;
                glommio::executor().yield_now().await;
            }
            assert_eq!(target.seen.borrow().len(), 100);
            assert_eq!(parks(), 0, "parked while the lane was busy");
            settle().await;
            assert_eq!(parks(), 1, "a quiet lane parks its drain");
            assert!(tx.push(Event::Data(100, Stamp::default())).is_ok());
            tx.publish();
            settle().await;
            assert_eq!(
                target.seen.borrow().len(),
                101,
                "the publish woke the drain"
            );
            tx.close();
            task.await;
            assert_all_in_order(&target, 101);
        });
    }

    /// On a spinning shard (`spin:1000` here), a drain whose lane gets something every few
    /// microseconds, with nothing else to run in between (this shard's own source has ended,
    /// the other shard's has not), polls its lane on a timer instead of parking after each
    /// delivery; once the lane has been quiet for the spin time it parks. Without the timer
    /// every delivery here was followed by a park.
    #[test]
    fn a_drain_on_a_spinning_shard_polls_instead_of_parking() {
        let spin = std::time::Duration::from_millis(1);
        glommio::LocalExecutor::default().run(async move {
            let (_, target, mut tx, task) =
                one_lane_drain(crate::runtime::config::Poll::SpinFor(spin));
            let parks = || PARKS.with(|p| p.get());
            let before = parks();
            for i in 0..100 {
                assert!(tx.push(Event::Data(i, Stamp::default())).is_ok());
                tx.publish();
                // Not a yield: this task is off the run queue, so the drain runs dry.
                glommio::timer::sleep(std::time::Duration::from_micros(1)).await;
            }
            let during = parks() - before;
            // A thread held off its core for longer than the spin time (a loaded machine)
            // parks the drain once for each time; 100 parks is what always parking gives.
            assert!(during <= 10, "{during} parks in 100 deliveries");
            glommio::timer::sleep(spin * 4).await;
            assert_eq!(parks() - before, during + 1, "a quiet lane parks its drain");
            assert!(tx.push(Event::Data(100, Stamp::default())).is_ok());
            tx.publish();
            tx.close();
            task.await;
            assert_all_in_order(&target, 101);
        });
    }

    /// A hot drain on a shard whose other task never lets the run queue run dry (a busy
    /// source: glommio fires no timer then) takes what comes in at that task's next flush.
    /// Without the wake at flush each message here would wait for glommio's preemption timer
    /// (100 ms); the test would fail at its first look.
    #[test]
    fn a_hot_drain_is_woken_by_its_shards_flush() {
        glommio::LocalExecutor::default().run(async {
            let (core, target, mut tx, task) = one_lane_drain(crate::runtime::config::Poll::Spin);
            for i in 0..50 {
                assert!(tx.push(Event::Data(i, Stamp::default())).is_ok());
                tx.publish();
                core.flush();
                // Enough turns for the drain to take it and run out of passes (it is then
                // waiting on its timer and on the next flush).
                for _ in 0..2 * crate::runtime::idle::PASSES {
                    glommio::executor().yield_now().await;
                }
                assert_eq!(target.seen.borrow().len(), i as usize + 1, "message {i}");
            }
            tx.close();
            core.flush();
            task.await;
            assert_all_in_order(&target, 50);
        });
    }

    /// Barrier alignment at an exchange: a ring that delivered its barrier is held (the data
    /// behind the barrier waits in the ring) until the local port and the other ring have
    /// delivered theirs; then the barrier is forwarded once and the held data follows.
    #[test]
    fn a_ring_is_held_after_its_barrier_until_every_port_has_it() {
        glommio::LocalExecutor::default().run(async {
            let core = ShardCore::for_test(0, 3);
            let target = Rc::new(Log {
                ports: Ports::new(3),
                seen: RefCell::new(Vec::new()),
            });
            let (mut a_tx, a_rx) = lane::channel::<u64>(8);
            let (mut b_tx, b_rx) = lane::channel::<u64>(8);
            for e in [
                Event::Data(1, Stamp::default()),
                Event::Control(Control::Barrier(7)),
                Event::Data(2, Stamp::default()),
            ] {
                assert!(a_tx.push(e).is_ok());
            }
            a_tx.publish();
            assert!(b_tx.push(Event::Data(10, Stamp::default())).is_ok());
            b_tx.publish();
            let input: Rc<dyn Input<u64>> = target.clone();
            let task =
                glommio::spawn_local(drain(vec![(a_rx, 1), (b_rx, 2)], input, Rc::from([]), core));
            settle().await;
            assert_eq!(
                *target.seen.borrow(),
                ["data 1", "data 10"],
                "2 waits behind the barrier"
            );
            // The local port's barrier: ring b has not delivered its own yet.
            target.control(0, Control::Barrier(7));
            settle().await;
            assert_eq!(target.seen.borrow().len(), 2);
            assert!(b_tx.push(Event::Control(Control::Barrier(7))).is_ok());
            b_tx.publish();
            settle().await;
            assert_eq!(
                *target.seen.borrow(),
                ["data 1", "data 10", "forward Barrier(7)", "data 2"]
            );
            a_tx.close();
            b_tx.close();
            task.await;
        });
    }
}
