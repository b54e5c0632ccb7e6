//! One shard: the pieces of the application graph that run on one core, and how they wait.
//!
//! An application is turned into a graph of closures on every shard (see `pipeline`): each
//! stage calls the next one directly, so a message that stays on its shard costs a few indirect
//! calls. A keyed stage sends messages whose key another shard owns through an [`Outbox`] into
//! that shard's ring, where the stage's drain task on the owning shard picks them up.
//!
//! Backpressure is local and never drops: a ring that is full spills into its outbox's overflow
//! queue and raises the outbox's [`Gauge`]; a sink buffer over its limit raises its gauge. A
//! source connection checks the gauges downstream of it after each frame and stops reading its
//! socket until they fall, which pushes back to the sender through TCP. A drain task checks
//! only the gauges strictly downstream of its stage, so waits always point downstream and can
//! never form a cycle.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use crate::codec::DecodeError;
use crate::metrics::ShardMetrics;
use crate::net::sink::SinkBuffer;
use crate::net::source::Connections;
use crate::runtime::doorbell::Doorbell;
use crate::runtime::ring::{self, Consumer, Producer};

/// A boxed future local to a shard.
pub(crate) type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

/// The entry point of a stage: takes a message and the time its input frame was read.
pub(crate) type Emit<T> = Rc<dyn Fn(T, u64)>;

/// A resource that can fill up (a sink buffer, a ring's overflow): `true` while over its limit.
#[derive(Clone, Default)]
pub(crate) struct Gauge(Rc<Cell<bool>>);

impl Gauge {
    pub(crate) fn is_over(&self) -> bool {
        self.0.get()
    }
    pub(crate) fn set(&self, over: bool) {
        self.0.set(over)
    }
}

/// Where a stage sends its outputs, and the gauges of everything that lies downstream.
#[doc(hidden)]
pub struct Downstream<T> {
    pub(crate) emit: Emit<T>,
    pub(crate) gauges: Rc<[Gauge]>,
}

impl<T> Clone for Downstream<T> {
    fn clone(&self) -> Self {
        Downstream {
            emit: self.emit.clone(),
            gauges: self.gauges.clone(),
        }
    }
}

/// Tasks waiting for any gauge of this shard to fall. Gauges fall rarely (a sink write
/// completed, an overflow emptied), so waking every waiter then is cheap and simple.
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

    pub(crate) fn wake_all(&self) {
        for w in self.0.borrow_mut().drain(..) {
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

/// The shard-wide services that sources and drain tasks use while running.
pub(crate) struct ShardCore {
    pub(crate) index: usize,
    pub(crate) metrics: Rc<ShardMetrics>,
    pub(crate) relief: Rc<WaitList>,
    publishers: Vec<Rc<dyn Publish>>,
}

impl ShardCore {
    /// Publishes every outbox's pending ring items: called after each read or drain batch, so a
    /// batch crosses cores with one store per ring.
    pub(crate) fn flush(&self) {
        for p in &self.publishers {
            p.publish();
        }
    }

    /// Waits until `gauges` are all clear (after publishing, so consumers can make room).
    pub(crate) async fn backpressure(&self, gauges: &[Gauge]) {
        if gauges.iter().any(Gauge::is_over) {
            self.metrics.pause();
            self.flush();
            self.relief.until_clear(gauges).await;
        }
    }
}

trait Publish {
    fn publish(&self);
}

/// Decodes one frame's payload and runs the message through the graph.
pub(crate) type FrameHandler = Box<dyn Fn(&[u8], u64) -> Result<(), DecodeError>>;

/// Starts a shard-local task, given the shard's services and its stop latch.
pub(crate) type LocalTask = Box<dyn FnOnce(Rc<ShardCore>, Rc<Connections>) -> LocalFuture>;

/// Starts an in-process sink's task, given the shard's services, its stop latch and the
/// signal that everything upstream of the sink is done.
pub(crate) type SinkTask =
    Box<dyn FnOnce(Rc<ShardCore>, Rc<Connections>, Rc<Notify>) -> LocalFuture>;

/// A source as seen by one shard: its name and what to do with each frame.
pub(crate) struct SourceRuntime {
    pub(crate) name: String,
    /// Decodes one payload and runs it through the graph.
    pub(crate) on_frame: FrameHandler,
    pub(crate) gauges: Rc<[Gauge]>,
}

/// A keyed stage as seen by one shard: its drain task and how to close its outgoing rings.
pub(crate) struct StageRuntime {
    pub(crate) id: usize,
    /// Drains the rings from other shards into the local state; ends when they are closed.
    pub(crate) drain: Option<Box<dyn FnOnce(Rc<ShardCore>) -> LocalFuture>>,
    /// Moves overflow into the rings; ends (closing the rings) once `closing` is notified.
    pub(crate) movers: Vec<LocalFuture>,
    pub(crate) closing: Vec<Rc<Notify>>,
}

/// Ring ends waiting for the shard that will own them. Each shard builds its graph on its own
/// thread; whichever of two shards reaches a ring first creates it and leaves the other end
/// here. Used only at start-up, so the lock is never on the hot path.
pub(crate) struct RingRegistry {
    ends: Mutex<HashMap<RingEnd, Box<dyn Any + Send>>>,
    bells: Vec<Arc<Doorbell>>,
}

/// (stage, from shard, to shard, is the producer end).
type RingEnd = (usize, usize, usize, bool);

impl RingRegistry {
    /// A registry for shards whose doorbells are `bells`, by shard index.
    pub(crate) fn new(bells: Vec<Arc<Doorbell>>) -> Self {
        RingRegistry {
            ends: Mutex::default(),
            bells,
        }
    }

    /// Takes this shard's end of the ring for `stage` from shard `from` to shard `to`.
    fn take<T: Send + 'static>(
        &self,
        stage: usize,
        from: usize,
        to: usize,
        producer: bool,
        capacity: usize,
    ) -> Box<dyn Any + Send> {
        let mut map = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(end) = map.remove(&(stage, from, to, producer)) {
            return end;
        }
        let (tx, rx) = ring::channel_between::<(T, u64)>(
            capacity,
            Some(&self.bells[from]),
            Some(&self.bells[to]),
        );
        if producer {
            map.insert((stage, from, to, false), Box::new(rx));
            Box::new(tx)
        } else {
            map.insert((stage, from, to, true), Box::new(tx));
            Box::new(rx)
        }
    }
}

/// Builds one shard's copy of the application graph.
pub struct ShardBuilder {
    pub(crate) index: usize,
    pub(crate) shards: usize,
    pub(crate) metrics: Rc<ShardMetrics>,
    pub(crate) relief: Rc<WaitList>,
    pub(crate) sources: Vec<SourceRuntime>,
    pub(crate) stages: Vec<StageRuntime>,
    pub(crate) sinks: Vec<Rc<SinkBuffer>>,
    pub(crate) sink_buffer: usize,
    /// Tasks of in-process sources and sinks, started with the shard and awaited (in order)
    /// when it stops, before the keyed stages close.
    pub(crate) local_tasks: Vec<LocalTask>,
    /// Tasks of in-process sinks: told to finish (and awaited) after the keyed stages close.
    pub(crate) sink_tasks: Vec<SinkTask>,
    publishers: Vec<Rc<dyn Publish>>,
    rings: Arc<RingRegistry>,
    ring_capacity: usize,
    next_stage: usize,
}

impl ShardBuilder {
    pub(crate) fn new(
        index: usize,
        shards: usize,
        rings: Arc<RingRegistry>,
        ring_capacity: usize,
        sink_buffer: usize,
    ) -> Self {
        ShardBuilder {
            index,
            shards,
            metrics: Rc::new(ShardMetrics::default()),
            relief: Rc::new(WaitList::default()),
            sources: Vec::new(),
            stages: Vec::new(),
            sinks: Vec::new(),
            sink_buffer,
            local_tasks: Vec::new(),
            sink_tasks: Vec::new(),
            publishers: Vec::new(),
            rings,
            ring_capacity,
            next_stage: 0,
        }
    }

    /// This shard's doorbell, for rings whose other end is on a host thread.
    pub(crate) fn bell(&self) -> Arc<Doorbell> {
        self.rings.bells[self.index].clone()
    }

    /// The services the running shard's tasks share, once the graph is built.
    pub(crate) fn core(&mut self) -> Rc<ShardCore> {
        Rc::new(ShardCore {
            index: self.index,
            metrics: self.metrics.clone(),
            relief: self.relief.clone(),
            publishers: std::mem::take(&mut self.publishers),
        })
    }

    /// Adds a keyed stage: `route` gives a message's owning shard, `local` runs it on the shard
    /// that owns it. Returns the stage's entry point on this shard.
    pub(crate) fn keyed_stage<T: Send + 'static>(
        &mut self,
        route: impl Fn(&T) -> usize + 'static,
        local: Emit<T>,
        downstream_gauges: Rc<[Gauge]>,
    ) -> Downstream<T> {
        let id = self.next_stage;
        self.next_stage += 1;
        if self.shards == 1 {
            return Downstream {
                emit: local,
                gauges: downstream_gauges,
            };
        }
        let mut outboxes: Vec<Option<Rc<Outbox<T>>>> = Vec::with_capacity(self.shards);
        let mut consumers = Vec::new();
        let mut stage = StageRuntime {
            id,
            drain: None,
            movers: Vec::new(),
            closing: Vec::new(),
        };
        let mut gauges: Vec<Gauge> = downstream_gauges.to_vec();
        for other in 0..self.shards {
            if other == self.index {
                outboxes.push(None);
                continue;
            }
            let tx = self
                .rings
                .take::<T>(id, self.index, other, true, self.ring_capacity);
            let rx = self
                .rings
                .take::<T>(id, other, self.index, false, self.ring_capacity);
            let (Ok(tx), Ok(rx)) = (
                tx.downcast::<Producer<(T, u64)>>(),
                rx.downcast::<Consumer<(T, u64)>>(),
            ) else {
                unreachable!("ring registry keys carry their stage's message type");
            };
            let outbox = Rc::new(Outbox {
                spill: Spill::new(*tx),
            });
            let closing = Rc::new(Notify::default());
            gauges.push(outbox.spill.gauge.clone());
            stage.movers.push(Box::pin(
                outbox.clone().mover(closing.clone(), self.relief.clone()),
            ));
            stage.closing.push(closing);
            self.publishers.push(outbox.clone());
            outboxes.push(Some(outbox));
            consumers.push(*rx);
        }
        let me = self.index;
        let local_for_drain = local.clone();
        stage.drain = Some(Box::new(move |core: Rc<ShardCore>| {
            Box::pin(drain(consumers, local_for_drain, downstream_gauges, core)) as LocalFuture
        }));
        self.stages.push(stage);
        let emit: Emit<T> = Rc::new(move |msg: T, ingest: u64| {
            let dst = route(&msg);
            match &outboxes[dst] {
                Some(outbox) => outbox.send((msg, ingest)),
                None if dst == me => local(msg, ingest),
                None => unreachable!("route() returned shard {dst} out of range"),
            }
        });
        Downstream {
            emit,
            gauges: gauges.into(),
        }
    }
}

/// A ring's producer end with an overflow queue: what a shard uses to send into a ring without
/// ever blocking or dropping. A message that finds the ring full waits, in order, in the overflow
/// queue and raises the gauge, so the sources upstream stop reading; the owner's mover task moves
/// the overflow into the ring as the consumer makes room.
pub(crate) struct Spill<T> {
    ring: RefCell<Producer<T>>,
    overflow: RefCell<VecDeque<T>>,
    pub(crate) gauge: Gauge,
    spilled: Notify,
}

impl<T: Send + 'static> Spill<T> {
    pub(crate) fn new(ring: Producer<T>) -> Self {
        Spill {
            ring: RefCell::new(ring),
            overflow: RefCell::new(VecDeque::new()),
            gauge: Gauge::default(),
            spilled: Notify::default(),
        }
    }

    /// Pushes `item` (publishing it at once if `publish`), or queues it behind the ones already
    /// waiting; raises the gauge on the first spill when `backpressure` is wanted.
    #[inline]
    pub(crate) fn send(&self, item: T, publish: bool, backpressure: bool) {
        let mut overflow = self.overflow.borrow_mut();
        if !overflow.is_empty() {
            overflow.push_back(item);
            return;
        }
        let mut ring = self.ring.borrow_mut();
        match ring.push(item) {
            Ok(()) if publish => ring.publish(),
            Ok(()) => {}
            Err(item) => {
                overflow.push_back(item);
                if backpressure {
                    self.gauge.set(true);
                }
                self.spilled.notify();
            }
        }
    }

    /// Waits until something has spilled.
    pub(crate) async fn spilled(&self) {
        self.spilled.notified().await
    }

    /// Moves what fits from the overflow into the ring and publishes; true when the overflow is
    /// empty.
    pub(crate) fn move_overflow(&self) -> bool {
        let mut overflow = self.overflow.borrow_mut();
        let mut ring = self.ring.borrow_mut();
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
        std::future::poll_fn(|cx| self.ring.borrow_mut().poll_space(cx)).await
    }

    /// Lowers the gauge (after the overflow emptied) and wakes whoever waited on it.
    pub(crate) fn relieve(&self, relief: &WaitList) {
        if self.gauge.is_over() {
            self.gauge.set(false);
            relief.wake_all();
        }
    }

    /// Takes whatever is still queued (for a ring whose consumer will not make room).
    pub(crate) fn take_overflow(&self) -> VecDeque<T> {
        std::mem::take(&mut *self.overflow.borrow_mut())
    }

    /// Publishes what is pending and tells the consumer no more will come.
    pub(crate) fn close(&self) {
        self.ring.borrow_mut().close();
    }
}

/// This shard's sending side of one keyed stage towards one other shard.
struct Outbox<T> {
    spill: Spill<(T, u64)>,
}

impl<T: Send + 'static> Outbox<T> {
    /// Queues one message; it is published with the rest of its batch by `ShardCore::flush`.
    fn send(&self, item: (T, u64)) {
        self.spill.send(item, false, true);
    }

    /// Moves spilled messages into the ring as the consumer makes room; on `closing`, empties
    /// the overflow and closes the ring.
    async fn mover(self: Rc<Self>, closing: Rc<Notify>, relief: Rc<WaitList>) {
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
        let mut p = self.spill.ring.borrow_mut();
        if p.has_pending() {
            p.publish();
        }
    }
}

/// Runs messages that other shards routed here through the local state, until every other
/// shard has closed its ring to us.
async fn drain<T: Send + 'static>(
    mut consumers: Vec<Consumer<(T, u64)>>,
    local: Emit<T>,
    gauges: Rc<[Gauge]>,
    core: Rc<ShardCore>,
) {
    loop {
        let mut drained = 0;
        for c in consumers.iter_mut() {
            drained += c.drain(|(msg, ingest)| local(msg, ingest));
        }
        if drained == 0 {
            // Forget the rings whose producer has closed and that are empty: they will never
            // carry anything again, and a closed ring's `poll_ready` is always ready, so keeping
            // one in the wait below would turn it into a busy loop that never yields. With three
            // or more shards that loop starved this shard's own stop task, which therefore never
            // closed this shard's rings to the others, whose drains then spun the same way.
            consumers.retain(|c| !c.is_finished());
            if consumers.is_empty() {
                return;
            }
            // Park until a producer publishes. With `--poll spin` the executor itself keeps
            // polling its io_uring instead of sleeping, so the doorbell's wake-up is picked up
            // at once. (Spinning here, in the task, would keep glommio from polling I/O at all
            // until its preemption timer fires.)
            std::future::poll_fn(|cx| {
                let mut ready = false;
                for c in consumers.iter_mut() {
                    ready |= c.poll_ready(cx).is_ready();
                }
                if ready {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            continue;
        }
        core.flush();
        core.backpressure(&gauges).await;
        glommio::yield_if_needed().await;
    }
}
