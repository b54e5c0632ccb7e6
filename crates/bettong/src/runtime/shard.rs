//! One shard's services: what its operators, connectors and tasks share while it runs, and how
//! they wait.
//!
//! Backpressure is local and never drops: a ring that is full spills into its outbox's overflow
//! queue and raises the outbox's [`Gauge`]; a sink buffer over its limit raises its gauge. A
//! source checks the gauges downstream of it after each batch and stops reading until they
//! fall, which pushes back to its peer (through TCP, or a pusher's full ring). An exchange's
//! drain task checks only the gauges strictly downstream of its operator, so waits always
//! point downstream and can never form a cycle.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use crate::event::{Event, Stamp};
use crate::metrics::ShardMetrics;
use crate::runtime::config::EngineConfig;
use crate::runtime::doorbell::Doorbell;
use crate::runtime::lane::{self, LaneReceiver, LaneSender};
use crate::runtime::ring::Producer;

/// A boxed future local to a shard.
pub(crate) type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

/// A resource that can fill up (a sink buffer, a ring's overflow): over its limit or not.
/// Sources upstream of a gauge that is over stop reading until it falls.
///
/// ```
/// let g = bettong::Gauge::default();
/// g.set(true);
/// assert!(g.is_over());
/// ```
#[derive(Clone, Default)]
pub struct Gauge(Rc<Cell<bool>>);

impl Gauge {
    /// True while the resource is over its limit.
    pub fn is_over(&self) -> bool {
        self.0.get()
    }

    /// Raises or lowers the gauge (after lowering, wake the waiters:
    /// [`SinkContext::relieve`](crate::SinkContext::relieve)).
    pub fn set(&self, over: bool) {
        self.0.set(over)
    }
}

/// True while any of `gauges` is over its limit. A source checks this per message and awaits
/// [`ShardCore::backpressure`] only when it is true: awaiting it every time cost 52
/// instructions per message (its future's poll is a call of its own; callgrind, `bench
/// market-spread`, 1 shard), for a check that is nearly always false.
#[inline]
pub(crate) fn any_over(gauges: &[Gauge]) -> bool {
    gauges.iter().any(Gauge::is_over)
}

/// Tasks waiting for something on this shard. Events are rare (a gauge fell, the shard is
/// stopping), so waking every waiter then is cheap and simple.
#[derive(Default)]
pub(crate) struct WaitList(RefCell<Vec<Waker>>);

impl WaitList {
    /// Adds a task to wake. A task that polls again before being woken is kept once, so the
    /// list stays as long as the number of distinct waiting tasks.
    pub(crate) fn register(&self, waker: &Waker) {
        let mut list = self.0.borrow_mut();
        if !list.iter().any(|w| w.will_wake(waker)) {
            list.push(waker.clone());
        }
    }

    /// Takes a task off the list (it stopped waiting some other way).
    pub(crate) fn forget(&self, waker: &Waker) {
        self.0.borrow_mut().retain(|w| !w.will_wake(waker));
    }

    /// True when no task waits here.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    pub(crate) fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.0.borrow_mut());
        for w in wakers {
            w.wake();
        }
    }

    /// Waits until none of `gauges` is over.
    pub(crate) async fn until_clear(&self, gauges: &[Gauge]) {
        std::future::poll_fn(|cx| {
            if gauges.iter().any(Gauge::is_over) {
                self.register(cx.waker());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

/// A flag that is set once and that any number of tasks on the shard can wait for.
#[derive(Default)]
pub(crate) struct Latch {
    set: Cell<bool>,
    waiters: WaitList,
}

impl Latch {
    pub(crate) fn set(&self) {
        self.set.set(true);
        self.waiters.wake_all();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Registers a waker to be woken when the latch is set (for tasks that poll for it).
    pub(crate) fn register(&self, waker: &Waker) {
        self.waiters.register(waker)
    }

    pub(crate) async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.set.get() {
                Poll::Ready(())
            } else {
                self.waiters.register(cx.waker());
                Poll::Pending
            }
        })
        .await
    }
}

/// A single-waiter local notification (a flag plus the waker of the task that waits on it).
#[derive(Default)]
pub(crate) struct Notify {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Notify {
    pub(crate) fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    pub(crate) async fn notified(&self) {
        std::future::poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// Something with ring items waiting to be published.
pub(crate) trait Publish {
    fn publish(&self);
}

/// What a source does with the frames it reads: decodes each payload and runs the message
/// through the graph. Its one implementation is generic over the decoder (`connect::tcp`), so
/// that `frames`, the loop over a read's frames, has the decoder and the call into the graph
/// inlined. With a boxed closure called per frame (its prologue, its `Result`, a wall-clock
/// stamp per frame), Market Spread over TCP on 1 shard took 298.8 instructions per message in
/// the shard's tasks; with this, 261.0 (`perf/callgrind.sh`'s TCP count).
pub(crate) trait FrameHandler {
    /// Decodes one payload read at `stamp`, runs the message through the graph and returns
    /// its event time.
    fn frame(&self, payload: &[u8], stamp: Stamp) -> Result<u64, crate::codec::DecodeError>;

    /// Runs every whole frame buffered in `reader` as [`frame`](Self::frame) does, with
    /// [`each_frame`](crate::net::source::each_frame).
    fn frames(
        &self,
        reader: &mut crate::codec::FrameReader,
        batch: &mut crate::net::source::FrameBatch<'_>,
    ) -> Result<Frames, crate::codec::FrameTooLarge>;
}

/// Why [`FrameHandler::frames`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frames {
    /// No whole frame is left in the buffer.
    Drained,
    /// A gauge downstream is over its limit: wait for relief, then call again.
    Paused,
}

/// A TCP source as seen by one shard's connections: its name and what to do with each frame.
pub(crate) struct SourceRuntime {
    pub(crate) name: String,
    /// Decodes one payload and runs it through the graph.
    pub(crate) on_frame: Box<dyn FrameHandler>,
    pub(crate) gauges: Rc<[Gauge]>,
    /// Each connection's event-time progress.
    pub(crate) watermarks: crate::connect::watermarks::Watermarks,
    /// The source's counters on this shard.
    pub(crate) counters: Arc<crate::metrics::live::SourceCounters>,
    /// Set when the clients speak the connector protocol.
    pub(crate) connector: Option<Rc<crate::connect::connector_source::ConnectorShard>>,
}

/// The shard-wide services that operators, connectors and tasks share while it runs.
pub(crate) struct ShardCore {
    pub(crate) index: usize,
    pub(crate) shards: usize,
    pub(crate) config: EngineConfig,
    pub(crate) metrics: Rc<ShardMetrics>,
    /// Woken when a gauge falls.
    pub(crate) relief: Rc<WaitList>,
    /// Set when the engine stops.
    pub(crate) stop: Latch,
    /// Set when the stop's drain timeout has passed: connectors give up what is still open.
    pub(crate) deadline: Latch,
    /// This shard's doorbell, for rings whose other end is on a host thread.
    pub(crate) bell: Arc<Doorbell>,
    /// Checkpoints: the one in flight on this shard, and what was restored at start.
    pub(crate) checkpoints: crate::runtime::checkpoints::ShardCheckpoints,
    publishers: RefCell<Vec<Rc<dyn Publish>>>,
    /// Exchange drains polling their lanes on a timer (`runtime::idle`), woken by
    /// [`wake_pollers`](Self::wake_pollers) too: a busy task keeps glommio's run queue from
    /// running dry, and timers fire only once it has (or after the 100 ms preemption timer).
    pub(crate) pollers: WaitList,
}

impl ShardCore {
    /// Shard `index` of `shards` for unit tests: the default configuration but `--poll park`,
    /// as the tests' executors never spin (a drain then parks once its passes find nothing,
    /// rather than polling on a timer that a test's yields would never let fire).
    #[cfg(test)]
    pub(crate) fn for_test(index: usize, shards: usize) -> Rc<ShardCore> {
        let bell = Doorbell::new().unwrap_or_else(|e| panic!("a doorbell: {e}"));
        let config = EngineConfig {
            poll: crate::runtime::config::Poll::Park,
            ..EngineConfig::default()
        };
        Rc::new(ShardCore::new(index, shards, config, bell))
    }

    pub(crate) fn new(
        index: usize,
        shards: usize,
        config: EngineConfig,
        bell: Arc<Doorbell>,
    ) -> Self {
        ShardCore {
            bell,
            checkpoints: Default::default(),
            index,
            shards,
            config,
            metrics: Rc::new(ShardMetrics::for_shard(index)),
            relief: Rc::new(WaitList::default()),
            stop: Latch::default(),
            deadline: Latch::default(),
            publishers: RefCell::new(Vec::new()),
            pollers: WaitList::default(),
        }
    }

    pub(crate) fn add_publisher(&self, p: Rc<dyn Publish>) {
        self.publishers.borrow_mut().push(p);
    }

    /// Publishes every outbox's pending ring items: called after each read or drain batch, so a
    /// batch crosses cores with one store per ring.
    #[inline]
    pub(crate) fn flush(&self) {
        for p in self.publishers.borrow().iter() {
            p.publish();
        }
        // The end of a batch: the messages it finished get their latency now.
        self.metrics.settle_latency();
        self.wake_pollers();
    }

    /// Wakes the tasks that wait on this shard's busy tasks rather than on its reactor: the
    /// doorbell's rung waiters and the exchange drains polling on a timer (neither a socket
    /// completion nor a timer is looked at while the run queue stays busy). Called at every
    /// flush, and by a task that spins without flushing (an in-process source waiting for
    /// input).
    #[inline]
    pub(crate) fn wake_pollers(&self) {
        self.bell.answer();
        if !self.pollers.is_empty() {
            self.pollers.wake_all();
        }
    }

    /// Waits until `gauges` are all clear (after publishing, so consumers can make room).
    pub(crate) async fn backpressure(&self, gauges: &[Gauge]) {
        if any_over(gauges) {
            self.metrics.pause();
            let paused = crate::metrics::now_ns();
            self.flush();
            self.relief.until_clear(gauges).await;
            self.metrics
                .paused_for(crate::metrics::now_ns().saturating_sub(paused));
        }
    }
}

/// Lets the shard's other tasks run: every task that keeps data moving (sources, exchange
/// drains) calls this after each batch.
///
/// It always yields. glommio's `yield_if_needed` yields only once its preemption timer (100
/// ms) has fired, and a task that always has data never lets the task queue run dry: the
/// drains of the rings from other shards waited that long while those rings filled and the
/// other shards paused (`bench market-spread` on 2 shards ran its two feeds one after the
/// other, p99 93–97 ms; after every batch, p99 1.1–2.8 ms).
pub(crate) async fn yield_after_batch() {
    glommio::executor().yield_now().await
}

/// Ring ends waiting for the shard that will own them. Each shard builds its operators on its
/// own thread; whichever of two shards reaches a ring first creates it and leaves the other end
/// here. Used only at start-up, so the lock is never on the hot path.
pub(crate) struct RingRegistry {
    ends: Mutex<HashMap<RingEnd, Box<dyn Any + Send>>>,
    pub(crate) bells: Vec<Arc<Doorbell>>,
}

/// (exchange edge, from shard, to shard, is the producer end).
type RingEnd = (usize, usize, usize, bool);

impl RingRegistry {
    /// A registry for shards whose doorbells are `bells`, by shard index.
    pub(crate) fn new(bells: Vec<Arc<Doorbell>>) -> Self {
        RingRegistry {
            ends: Mutex::default(),
            bells,
        }
    }

    /// Takes this shard's end of the ring of exchange `edge` from shard `from` to shard `to`.
    pub(crate) fn take<T: Send + 'static>(
        &self,
        edge: usize,
        from: usize,
        to: usize,
        producer: bool,
        capacity: usize,
    ) -> Box<dyn Any + Send> {
        let mut map = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(end) = map.remove(&(edge, from, to, producer)) {
            return end;
        }
        let (tx, rx) =
            lane::channel_between::<T>(capacity, Some(&self.bells[from]), Some(&self.bells[to]));
        if producer {
            map.insert((edge, from, to, false), Box::new(rx));
            Box::new(tx)
        } else {
            map.insert((edge, from, to, true), Box::new(tx));
            Box::new(rx)
        }
    }

    /// Both ends this shard needs for exchange `edge` with shard `other`: the producer towards
    /// it and the consumer from it.
    pub(crate) fn pair<T: Send + 'static>(
        &self,
        edge: usize,
        me: usize,
        other: usize,
        capacity: usize,
    ) -> (LaneSender<T>, LaneReceiver<T>) {
        let tx = self.take::<T>(edge, me, other, true, capacity);
        let rx = self.take::<T>(edge, other, me, false, capacity);
        match (
            tx.downcast::<LaneSender<T>>(),
            rx.downcast::<LaneReceiver<T>>(),
        ) {
            (Ok(tx), Ok(rx)) => (*tx, *rx),
            _ => unreachable!("ring registry keys carry their edge's message type"),
        }
    }
}

/// The sending end of a ring, or of a lane of rings (`runtime::lane`): what a [`Spill`]
/// pushes into.
pub(crate) trait Sender {
    /// What goes in.
    type Item;
    /// Writes `item` without publishing it, or gives it back when there is no room (after
    /// publishing what was pending, so that the consumer can make some).
    fn push(&mut self, item: Self::Item) -> Result<(), Self::Item>;
    /// Makes what was pushed visible to the consumer, and wakes it if it is parked.
    fn publish(&mut self);
    /// True when something was pushed and not yet published.
    fn has_pending(&self) -> bool;
    /// Ready when the next push finds room; parks the task's waker otherwise.
    fn poll_space(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()>;
    /// Publishes what is pending and tells the consumer no more will come.
    fn close(&mut self);
}

impl<T: Send> Sender for Producer<T> {
    type Item = T;
    #[inline(always)]
    fn push(&mut self, item: T) -> Result<(), T> {
        Producer::push(self, item)
    }
    fn publish(&mut self) {
        Producer::publish(self)
    }
    fn has_pending(&self) -> bool {
        Producer::has_pending(self)
    }
    fn poll_space(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        Producer::poll_space(self, cx)
    }
    fn close(&mut self) {
        Producer::close(self)
    }
}

/// A ring's producer end with an overflow queue: what a shard uses to send into a ring without
/// ever blocking or dropping. A message that finds the ring full waits, in order, in the overflow
/// queue and raises the gauge, so the sources upstream stop reading; the owner's mover task moves
/// the overflow into the ring as the consumer makes room.
pub(crate) struct Spill<S: Sender> {
    /// The ring and the overflow behind it, under one borrow: a send borrowed two `RefCell`s
    /// before, about 6 instructions more per message that crosses to another shard
    /// (perf/peer bettong-iter under callgrind, 2 shards: 411.5 -> 408.3 per message).
    lanes: RefCell<Lanes<S>>,
    pub(crate) gauge: Gauge,
    spilled: Notify,
}

struct Lanes<S: Sender> {
    ring: S,
    overflow: VecDeque<S::Item>,
}

impl<T: Send> Spill<LaneSender<T>> {
    /// [`send`](Self::send) for a message into a lane (not published, backpressure wanted):
    /// the `Event` is built only when the message has to wait in the overflow. Through `send`,
    /// the message was copied into an `Event` on the stack ahead of the push, which reads it
    /// from where it was: Market Spread on 2 shards took 288.2 instructions per message, 284.1
    /// this way (perf/callgrind.sh's table across shards).
    #[inline(always)]
    pub(crate) fn send_data(&self, msg: T, stamp: Stamp) {
        let mut lanes = self.lanes.borrow_mut();
        if lanes.overflow.is_empty() {
            if let Err((msg, stamp)) = lanes.ring.push_data(msg, stamp) {
                drop(lanes);
                self.spill(Event::Data(msg, stamp), true);
            }
        } else {
            lanes.overflow.push_back(Event::Data(msg, stamp));
        }
    }

    /// [`send_data`](Self::send_data) for a run of messages with one stamp: one borrow, one
    /// look at the overflow and one stamp mark for the run. Why: on 2 shards each of those
    /// was paid per message that crossed; per run, Market Spread takes 292.8 -> 284.4
    /// instructions per message (perf/peer `bettong-iter` under callgrind, 2 shards). The
    /// overflow's `extend` is written out in both branches: one after the `if`, with the
    /// borrow taken again, took 282.0 -> 282.6.
    #[inline(always)]
    pub(crate) fn send_run(&self, mut run: impl Iterator<Item = T>, stamp: Stamp) {
        let mut lanes = self.lanes.borrow_mut();
        if lanes.overflow.is_empty() {
            if let Err(msg) = lanes.ring.push_run(&mut run, stamp) {
                drop(lanes);
                self.spill(Event::Data(msg, stamp), true);
                // Behind the one that did not fit, in order.
                let mut lanes = self.lanes.borrow_mut();
                lanes.overflow.extend(run.map(|m| Event::Data(m, stamp)));
            }
        } else {
            lanes.overflow.extend(run.map(|m| Event::Data(m, stamp)));
        }
    }
}

impl<S: Sender> Spill<S> {
    pub(crate) fn new(ring: S) -> Self {
        Spill {
            lanes: RefCell::new(Lanes {
                ring,
                overflow: VecDeque::new(),
            }),
            gauge: Gauge::default(),
            spilled: Notify::default(),
        }
    }

    /// Pushes `item` (publishing it at once if `publish`), or queues it behind the ones already
    /// waiting; raises the gauge on the first spill when `backpressure` is wanted.
    ///
    /// The push is inlined into the caller and the spill is out of line. Why: as one `#[inline]`
    /// function it stayed a call of its own, and inlining the push cut Market Spread on
    /// 2 shards from 383.3 to 374.1 instructions per message (perf/peer bettong-iter under
    /// callgrind).
    #[inline(always)]
    pub(crate) fn send(&self, item: S::Item, publish: bool, backpressure: bool) {
        let mut lanes = self.lanes.borrow_mut();
        if lanes.overflow.is_empty() {
            match lanes.ring.push(item) {
                Ok(()) => {
                    if publish {
                        lanes.ring.publish();
                    }
                }
                Err(item) => {
                    drop(lanes);
                    self.spill(item, backpressure);
                }
            }
        } else {
            lanes.overflow.push_back(item);
        }
    }

    /// Queues `item` behind a full ring.
    #[cold]
    #[inline(never)]
    fn spill(&self, item: S::Item, backpressure: bool) {
        self.lanes.borrow_mut().overflow.push_back(item);
        if backpressure {
            self.gauge.set(true);
        }
        self.spilled.notify();
    }

    /// Waits until something has spilled.
    pub(crate) async fn spilled(&self) {
        self.spilled.notified().await
    }

    /// Moves what fits from the overflow into the ring and publishes; true when the overflow is
    /// empty.
    pub(crate) fn move_overflow(&self) -> bool {
        let mut lanes = self.lanes.borrow_mut();
        let Lanes { ring, overflow } = &mut *lanes;
        while let Some(item) = overflow.pop_front() {
            if let Err(item) = ring.push(item) {
                overflow.push_front(item);
                break;
            }
        }
        ring.publish();
        overflow.is_empty()
    }

    /// Waits until the ring has room.
    pub(crate) async fn space(&self) {
        std::future::poll_fn(|cx| self.lanes.borrow_mut().ring.poll_space(cx)).await
    }

    /// Lowers the gauge (after the overflow emptied) and wakes whoever waited on it.
    pub(crate) fn relieve(&self, relief: &WaitList) {
        if self.gauge.is_over() {
            self.gauge.set(false);
            relief.wake_all();
        }
    }

    /// Takes whatever is still queued (for a ring whose consumer will not make room).
    pub(crate) fn take_overflow(&self) -> VecDeque<S::Item> {
        std::mem::take(&mut self.lanes.borrow_mut().overflow)
    }

    /// Publishes what is pending and tells the consumer no more will come.
    pub(crate) fn close(&self) {
        self.lanes.borrow_mut().ring.close();
    }

    /// Publishes whatever was pushed and not yet published.
    #[inline]
    pub(crate) fn publish_pending(&self) {
        let ring = &mut self.lanes.borrow_mut().ring;
        if ring.has_pending() {
            ring.publish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ring;

    /// What finds the ring full waits in the overflow, in order, with the gauge raised; later
    /// sends queue behind it even when the ring has room again; `move_overflow` refills the
    /// ring in order as the consumer drains.
    #[test]
    fn a_full_ring_spills_in_order() {
        let (tx, mut rx) = ring::channel::<u32>(2);
        let spill = Spill::new(tx);
        for v in 0..5 {
            spill.send(v, false, true);
        }
        assert!(spill.gauge.is_over());
        spill.publish_pending();
        let mut got = Vec::new();
        rx.drain(|v| got.push(v));
        // The ring has room now, but 5 must still queue behind 2, 3 and 4.
        spill.send(5, true, true);
        let mut moved_all = false;
        while !moved_all {
            moved_all = spill.move_overflow();
            rx.drain(|v| got.push(v));
        }
        assert_eq!(got, [0, 1, 2, 3, 4, 5]);
        assert!(spill.take_overflow().is_empty());
    }

    /// A run that does not fit the lane waits in the overflow from the message that did not
    /// fit on, in order and with its stamp; a later run queues behind it even when the ring has
    /// room; nothing is lost or reordered once the overflow moves.
    #[test]
    fn a_run_that_does_not_fit_spills_in_order() {
        use crate::runtime::lane;
        let (tx, mut rx) = lane::channel::<u32>(2);
        let spill = Spill::new(tx);
        let stamp = |ns| Stamp {
            ingest_ns: ns,
            event_ns: ns,
        };
        spill.send_run(0..5u32, stamp(1));
        assert!(spill.gauge.is_over(), "the run spilled");
        let got = RefCell::new(Vec::new());
        let take = |rx: &mut lane::LaneReceiver<u32>| {
            rx.drain_until(
                |run, s| got.borrow_mut().extend(run.map(|m| (m, s.ingest_ns))),
                |_| true,
            );
        };
        take(&mut rx);
        spill.send_run(5..7u32, stamp(2));
        spill.send_run(std::iter::empty(), stamp(3));
        let mut moved_all = false;
        while !moved_all {
            moved_all = spill.move_overflow();
            take(&mut rx);
        }
        spill.send_run(7..9u32, stamp(4));
        spill.publish_pending();
        take(&mut rx);
        let want: Vec<(u32, u64)> = (0..9u32)
            .map(|m| (m, [1, 1, 1, 1, 1, 2, 2, 4, 4][m as usize]))
            .collect();
        assert_eq!(got.into_inner(), want);
    }
}
