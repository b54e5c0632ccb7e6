//! Connectors: where a pipeline's messages come from ([`Source`]) and where its outputs go
//! ([`Sink`]). Both are public traits; the TCP and in-process connectors shipped with the
//! engine implement them like any user crate would, through the contexts below.
//!
//! A connector's life:
//! 1. [`Source::open`] / [`Sink::open`] run once, on the thread that calls
//!    [`Engine::start`](crate::Engine::start), with the address `--in NAME@ADDRESS` or
//!    `--out NAME@ADDRESS` gave (if any). They prepare one *part* per shard (a TCP source binds
//!    its port here, so port 0 becomes one real port all shards share).
//! 2. Every shard gets its part: a source's [`Source::run`] future runs on the shard and feeds
//!    messages into the pipeline with [`SourceContext::emit`]; a sink's [`Sink::start`] gives
//!    the shard a [`SinkInput`] (called on the shard for every output) and optionally a task.
//! 3. On a stop, [`SourceContext::stopping`] resolves: a source finishes what it has read and
//!    returns. Once everything upstream of a sink is done, [`SinkContext::finishing`]
//!    resolves: the sink's task delivers what is left and returns.
//!
//! A source written outside the engine, reading framed records from a file (the complete
//! program is `examples/file_source.rs`):
//!
//! ```
//! use std::future::Future;
//! use bettong::{Error, Opened, Source, SourceContext, Stamp};
//!
//! /// Lines of a text, read by shard 0 only.
//! struct Lines(Vec<String>);
//!
//! impl Source for Lines {
//!     type Out = String;
//!     type Part = Vec<String>;
//!     fn open(&self, _name: &str, _address: Option<&str>, shards: usize) -> Result<Opened<Vec<String>>, Error> {
//!         Ok(Opened::per_shard(shards, |s| if s == 0 { self.0.clone() } else { Vec::new() }))
//!     }
//!     fn run(&self, lines: Vec<String>, ctx: SourceContext<String>) -> impl Future<Output = ()> + 'static {
//!         async move {
//!             for (i, line) in lines.into_iter().enumerate() {
//!                 ctx.count_in();
//!                 ctx.emit(line, Stamp::at(bettong::now_ns()));
//!                 // Once per batch, not per line: publish, wait out backpressure, and let
//!                 // the shard's other tasks run.
//!                 if i % 1024 == 1023 {
//!                     ctx.flush();
//!                     ctx.backpressure().await;
//!                     ctx.yield_if_needed().await;
//!                 }
//!             }
//!             ctx.flush();
//!         }
//!     }
//! }
//! ```

pub(crate) mod connector_source;
pub(crate) mod in_process;
pub(crate) mod iter_source;
mod protocol;
pub(crate) mod tcp;
mod twopc;
pub(crate) mod watermarks;

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;

use crate::error::Error;
use crate::event::{Control, Stamp};
use crate::ops::Downstream;
use crate::runtime::run::Run;
use crate::runtime::shard::{Gauge, Latch, LocalFuture, ShardCore};

/// What [`Source::open`] or [`Sink::open`] prepared: one part per shard, and a description of
/// the endpoint for the engine's `ready` line (a TCP source gives its bound address).
pub struct Opened<P> {
    /// One part per shard, by shard index.
    pub parts: Vec<P>,
    /// What the endpoint resolved to (`127.0.0.1:40123`), if there is one to show.
    pub endpoint: Option<String>,
}

impl<P> Opened<P> {
    /// A part per shard made by `part(shard)`, and no endpoint to show.
    ///
    /// ```
    /// let o = bettong::Opened::per_shard(3, |s| s * 10);
    /// assert_eq!(o.parts, vec![0, 10, 20]);
    /// ```
    pub fn per_shard(shards: usize, part: impl FnMut(usize) -> P) -> Self {
        Opened {
            parts: (0..shards).map(part).collect(),
            endpoint: None,
        }
    }
}

/// Where a pipeline's messages come from. See the [module docs](self) for the life of a
/// connector and an example.
pub trait Source: Send + Sync + 'static {
    /// The messages it produces.
    type Out: Send + 'static;
    /// What each shard receives from [`open`](Self::open).
    type Part: Send + 'static;

    /// Whether the source needs an address from `--in NAME@ADDRESS` (a TCP listener does).
    fn takes_address(&self) -> bool {
        false
    }

    /// Prepares the source for `shards` shards, before any shard starts.
    fn open(
        &self,
        name: &str,
        address: Option<&str>,
        shards: usize,
    ) -> Result<Opened<Self::Part>, Error>;

    /// Runs the source on one shard: emit messages through `ctx` until there are no more, or
    /// until [`SourceContext::stopping`] resolves and what was already read is emitted.
    fn run(
        &self,
        part: Self::Part,
        ctx: SourceContext<Self::Out>,
    ) -> impl Future<Output = ()> + 'static;
}

/// Where a pipeline's outputs go. See the [module docs](self).
pub trait Sink<T>: Send + Sync + 'static {
    /// What each shard receives from [`open`](Self::open).
    type Part: Send + 'static;

    /// Whether the sink needs an address from `--out NAME@ADDRESS` (a TCP sink does).
    fn takes_address(&self) -> bool {
        false
    }

    /// Prepares the sink for `shards` shards, before any shard starts.
    fn open(
        &self,
        name: &str,
        address: Option<&str>,
        shards: usize,
    ) -> Result<Opened<Self::Part>, Error>;

    /// Starts the sink on one shard.
    fn start(&self, part: Self::Part, ctx: SinkContext) -> SinkShard<T>;
}

/// A sink's instance on one shard: called for every output, on the shard that produced it.
pub trait SinkInput<T> {
    /// Takes one output. Encode or hand it off here; never block (raise the
    /// [`SinkContext::gauge`] when full instead).
    fn write(&self, msg: T, stamp: Stamp);
    /// Sees a control event once every input of the sink has delivered it (a barrier is where
    /// a transactional sink pre-commits).
    fn control(&self, event: Control) {
        let _ = event;
    }
}

/// What [`Sink::start`] gives the shard: the input, and a task that delivers (optional).
pub struct SinkShard<T> {
    /// Makes the graph's operator over the instance (typed by the instance, see
    /// `ops::sink::SinkOp`).
    pub(crate) wire: WireSink<T>,
    pub(crate) task: Option<LocalFuture>,
    /// The sink reports its own pre-commits ([`SinkContext::precommit`]).
    pub(crate) precommits: bool,
}

/// How a [`SinkShard`] becomes the graph's sink operator.
pub(crate) type WireSink<T> =
    Box<dyn FnOnce(crate::ops::sink::SinkWiring) -> Rc<dyn crate::ops::Input<T>>>;

impl<T: 'static> SinkShard<T> {
    /// A sink instance with no task of its own (it does its work in
    /// [`SinkInput::write`]).
    pub fn new(input: impl SinkInput<T> + 'static) -> Self {
        SinkShard {
            wire: Box::new(move |wiring| crate::ops::sink::SinkOp::wired(input, wiring)),
            task: None,
            precommits: false,
        }
    }

    /// Says that the sink pre-commits checkpoints itself, with [`SinkContext::precommit`]
    /// (once what it received before the barrier is durable); otherwise a barrier counts as
    /// pre-committed when it reaches the sink.
    pub fn with_precommit(mut self) -> Self {
        self.precommits = true;
        self
    }

    /// Adds the task that delivers the outputs; it must return once
    /// [`SinkContext::finishing`] has resolved and everything is delivered.
    pub fn with_task(mut self, task: impl Future<Output = ()> + 'static) -> Self {
        self.task = Some(Box::pin(task));
        self
    }
}

/// A source's view of the shard it runs on. Not `Send`: it lives on its shard.
pub struct SourceContext<T> {
    inner: Rc<SourceInner<T>>,
}

impl<T> Clone for SourceContext<T> {
    fn clone(&self) -> Self {
        SourceContext {
            inner: self.inner.clone(),
        }
    }
}

struct SourceInner<T> {
    name: String,
    down: Downstream<T>,
    core: Rc<ShardCore>,
    counters: std::sync::Arc<crate::metrics::live::SourceCounters>,
    tasks: RefCell<Vec<glommio::task::JoinHandle<()>>>,
    /// Where the source is in its input (a file offset), for checkpoints.
    offset: RefCell<Option<Rc<std::cell::Cell<u64>>>>,
    /// Where its streams are (a connector source), for checkpoints.
    streams: RefCell<Option<StreamsHook>>,
    ended: std::cell::Cell<bool>,
}

/// Gives a source's `(stream id, point of reference)` pairs at checkpoint barrier `id`.
type StreamsHook = Rc<dyn Fn(u64) -> Vec<(u64, u64)>>;

/// The outcomes of checkpoints as one connector sees them, in order: see
/// [`SourceContext::checkpoint_outcomes`] and [`SinkContext::checkpoint_outcomes`].
pub struct CheckpointOutcomes {
    core: Rc<ShardCore>,
    seen: u64,
}

impl CheckpointOutcomes {
    /// Waits for the outcome of the next checkpoint: `(id, true)` once it committed (its
    /// manifest is on disk), `(id, false)` if it was given up. Never resolves when the engine
    /// runs without `--resilience-dir`.
    pub async fn next(&mut self) -> (u64, bool) {
        let checkpoints = &self.core.checkpoints;
        let seen = self.seen;
        let outcome = std::future::poll_fn(|cx| match checkpoints.outcome_after(seen) {
            Some(o) => std::task::Poll::Ready(o),
            None => {
                checkpoints.outcome_waiters.register(cx.waker());
                std::task::Poll::Pending
            }
        })
        .await;
        self.seen = outcome.0;
        outcome
    }
}

impl<T: 'static> SourceContext<T> {
    pub(crate) fn new(name: &str, down: Downstream<T>, core: Rc<ShardCore>) -> Self {
        SourceContext {
            inner: Rc::new(SourceInner {
                name: name.to_string(),
                down,
                counters: core.metrics.source(name),
                core,
                tasks: RefCell::new(Vec::new()),
                offset: RefCell::new(None),
                streams: RefCell::new(None),
                ended: std::cell::Cell::new(false),
            }),
        }
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The index of the shard this runs on.
    pub fn shard(&self) -> usize {
        self.inner.core.index
    }

    /// How many shards the engine runs.
    pub fn shards(&self) -> usize {
        self.inner.core.shards
    }

    /// Runs one message through the pipeline (directly on this shard, or into the ring of the
    /// shard that owns its key).
    #[inline]
    pub fn emit(&self, msg: T, stamp: Stamp) {
        self.inner.down.data(msg, stamp)
    }

    /// Emits every message of `batch`, in order, with one stamp, and leaves it empty: for a
    /// source whose downstream [takes batches](Self::takes_batches).
    #[inline]
    pub(crate) fn emit_batch(&self, batch: &mut Vec<T>, stamp: Stamp) {
        self.inner.down.data_batch(batch, stamp)
    }

    /// Emits every message of `run`, in order, with one stamp, where they lie (a pusher's
    /// ring drained in place; see `runtime::run`).
    #[inline]
    pub(crate) fn emit_run(&self, run: Run<'_, T>, stamp: Stamp) {
        self.inner.down.data_run(run, stamp)
    }

    /// True when the operator this source feeds does better with batches than with messages
    /// one by one (a `key_by` exchange, a state computation; see `ops::Input::batches`).
    pub(crate) fn takes_batches(&self) -> bool {
        self.inner.down.batches()
    }

    /// Counts one message read (the summary's `in`).
    #[inline]
    pub fn count_in(&self) {
        self.inner
            .core
            .metrics
            .message_in_from(&self.inner.counters)
    }

    /// Counts `n` messages read at once (a source that pulls a batch and emits all of it).
    #[inline]
    pub(crate) fn count_in_n(&self, n: u64) {
        self.inner
            .core
            .metrics
            .messages_in_from(&self.inner.counters, n)
    }

    /// Counts a payload the decoder rejected.
    pub fn count_decode_error(&self) {
        self.inner
            .core
            .metrics
            .decode_error_from(&self.inner.counters)
    }

    /// Says that no message with an event time below `event_ns` will follow from this
    /// source on this shard.
    pub fn watermark(&self, event_ns: u64) {
        self.inner.down.control(Control::Watermark(event_ns))
    }

    /// Makes the source replayable: `offset` says how far into its input the source has
    /// emitted (updated by the source after each message); a checkpoint records it, and
    /// [`restored_offset`](Self::restored_offset) gives it back after a restart.
    pub fn track_offset(&self, offset: Rc<std::cell::Cell<u64>>) {
        *self.inner.offset.borrow_mut() = Some(offset);
    }

    /// The offset the last complete checkpoint recorded for this source on this shard, when
    /// the engine restarted from one.
    pub fn restored_offset(&self) -> Option<u64> {
        let restored = self.inner.core.checkpoints.restored.borrow();
        restored.offsets.get(&self.inner.name).copied()
    }

    /// Makes the source replayable stream by stream (a connector source): at each
    /// checkpoint barrier `streams(id)` gives the `(stream id, point of reference)` pairs to
    /// record, and [`restored_streams`](Self::restored_streams) gives them back after a
    /// restart (each stream's highest over every shard's record).
    pub fn track_streams(&self, streams: impl Fn(u64) -> Vec<(u64, u64)> + 'static) {
        *self.inner.streams.borrow_mut() = Some(Rc::new(streams));
    }

    /// The streams' points of reference that the last complete checkpoint recorded for this
    /// source (on any shard), when the engine restarted from one.
    pub fn restored_streams(&self) -> std::collections::HashMap<u64, u64> {
        let restored = self.inner.core.checkpoints.restored.borrow();
        restored
            .streams
            .get(&self.inner.name)
            .cloned()
            .unwrap_or_default()
    }

    /// True when the engine takes checkpoints (`--resilience-dir`).
    pub fn checkpointing(&self) -> bool {
        self.inner.core.config.resilience_dir.is_some()
    }

    /// The outcomes of the checkpoints from now on (a connector source acknowledges its
    /// peer's data once the checkpoint that holds it has committed).
    pub fn checkpoint_outcomes(&self) -> CheckpointOutcomes {
        outcomes_from_now(&self.inner.core)
    }

    /// Injects checkpoint barrier `id` (called by the shard, between messages).
    pub(crate) fn inject_barrier(&self, id: u64) {
        // A source that has ended still records where it ended (everything it emitted is
        // upstream of every later barrier), or a restart from a later checkpoint would replay
        // it from the start; it sends no barrier after its end of stream.
        let hook = self.inner.streams.borrow().clone();
        if let Some(streams) = hook {
            self.inner.core.checkpoints.record(
                id,
                crate::checkpoint::format::Record::Streams(
                    crate::checkpoint::format::StreamPositions {
                        source: self.inner.name.clone(),
                        shard: self.inner.core.index as u32,
                        streams: streams(id),
                    },
                ),
            );
        }
        if let Some(offset) = self.inner.offset.borrow().as_ref() {
            self.inner.core.checkpoints.record(
                id,
                crate::checkpoint::format::Record::SourceOffset(
                    crate::checkpoint::format::SourceOffset {
                        source: self.inner.name.clone(),
                        shard: self.inner.core.index as u32,
                        offset: offset.get(),
                    },
                ),
            );
        }
        if self.inner.ended.get() {
            return;
        }
        self.inner.down.control(Control::Barrier(id));
        self.inner.core.flush();
    }

    /// Says that this source has no data on this shard for now: operators downstream stop
    /// waiting for its watermark until it sends one again.
    pub fn idle(&self) {
        self.inner.down.control(Control::Idle)
    }

    /// Publishes the messages emitted so far to the other shards: call it after each batch
    /// (each read), so a batch crosses cores with one store per ring.
    #[inline]
    pub fn flush(&self) {
        self.inner.core.flush()
    }

    /// Waits while anything downstream is full (a ring, a sink buffer): a source stops
    /// reading until then, which is how backpressure reaches its peers.
    pub async fn backpressure(&self) {
        let gauges = &self.inner.down.gauges;
        if crate::runtime::shard::any_over(gauges) {
            self.inner.core.backpressure(gauges).await
        }
    }

    /// Lets the shard's other tasks run (its exchange drains, sinks and other sources): call
    /// it after each batch in a loop that does not otherwise wait, like a file read.
    ///
    /// It always yields. glommio's own `yield_if_needed` yields only when its preemption
    /// timer (100 ms) has fired, and a source that always has data would keep the drains of
    /// the rings from other shards waiting that long while the rings fill and the other
    /// shards pause (`bench market-spread` on 2 shards ran one feed at a time that way).
    pub async fn yield_if_needed(&self) {
        crate::runtime::shard::yield_after_batch().await
    }

    /// True once the engine is stopping.
    pub fn is_stopping(&self) -> bool {
        self.inner.core.stop.is_set()
    }

    /// Resolves once the engine is stopping.
    pub async fn stopping(&self) {
        self.inner.core.stop.wait().await
    }

    /// Resolves once the stop's drain timeout has passed (never, without one): whatever the
    /// source still reads must be cut off now so the stop ends in bounded time.
    pub async fn drain_deadline(&self) {
        self.inner.core.deadline.wait().await
    }

    /// Runs `task` on this shard. The shard waits for every task a source spawned before it
    /// ends the source's stream.
    pub fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        let handle = glommio::spawn_local(task).detach();
        self.inner.tasks.borrow_mut().push(handle);
    }

    pub(crate) fn core(&self) -> &Rc<ShardCore> {
        &self.inner.core
    }

    pub(crate) fn gauges(&self) -> &Rc<[Gauge]> {
        &self.inner.down.gauges
    }

    /// Ends the source on this shard: waits for its spawned tasks, publishes, and sends end of
    /// stream downstream.
    pub(crate) async fn finish(&self) {
        loop {
            let tasks = std::mem::take(&mut *self.inner.tasks.borrow_mut());
            if tasks.is_empty() {
                break;
            }
            for t in tasks {
                t.await;
            }
        }
        self.inner.ended.set(true);
        self.inner.down.control(Control::End);
        self.inner.core.flush();
    }
}

/// A sink's view of the shard it runs on.
pub struct SinkContext {
    pub(crate) name: String,
    pub(crate) core: Rc<ShardCore>,
    pub(crate) finish: Rc<Latch>,
    /// The gauges this sink raises, for the sources upstream to watch.
    pub(crate) gauges: Rc<RefCell<Vec<Gauge>>>,
}

impl SinkContext {
    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The index of the shard this runs on.
    pub fn shard(&self) -> usize {
        self.core.index
    }

    /// How many shards the engine runs.
    pub fn shards(&self) -> usize {
        self.core.shards
    }

    /// A new gauge for this sink: raise it while the sink cannot take more (the sources
    /// upstream stop reading), lower it and call [`relieve`](Self::relieve) when it can.
    pub fn gauge(&self) -> Gauge {
        let g = Gauge::default();
        self.add_gauge(g.clone());
        g
    }

    pub(crate) fn add_gauge(&self, gauge: Gauge) {
        self.gauges.borrow_mut().push(gauge);
    }

    /// Wakes the sources that wait on a gauge that has fallen.
    pub fn relieve(&self) {
        self.core.relief.wake_all()
    }

    /// True once the engine is stopping (a sink may stop holding its sources back then).
    pub fn is_stopping(&self) -> bool {
        self.core.stop.is_set()
    }

    /// Resolves once the engine is stopping.
    pub async fn stopping(&self) {
        self.core.stop.wait().await
    }

    /// Resolves once the stop's drain timeout has passed (never, without one): give up
    /// delivering, count what was not delivered, and end the task.
    pub async fn drain_deadline(&self) {
        self.core.deadline.wait().await
    }

    /// Resolves once everything upstream of the sink on this shard is done: deliver what is
    /// left and end the task.
    pub async fn finishing(&self) {
        self.finish.wait().await
    }

    pub(crate) fn core(&self) -> &Rc<ShardCore> {
        &self.core
    }

    /// Pre-commits checkpoint `id`: everything before its barrier is durable, up to
    /// `position` (recorded in the checkpoint, and given back by
    /// [`restored_position`](Self::restored_position) after a restart).
    pub fn precommit(&self, id: u64, position: Option<u64>) {
        if let Some(position) = position {
            self.core.checkpoints.record(
                id,
                crate::checkpoint::format::Record::SinkPosition(
                    crate::checkpoint::format::SinkPosition {
                        sink: self.name.clone(),
                        shard: self.core.index as u32,
                        position,
                    },
                ),
            );
        }
        precommitted(&self.core, id);
    }

    /// Refuses checkpoint `id` instead of pre-committing it (a two-phase-commit sink's peer
    /// voted no): the checkpoint is given up on every shard.
    pub fn refuse(&self, id: u64, why: &str) {
        self.core
            .checkpoints
            .refuse(self.core.index, id, format!("sink {}: {why}", self.name));
    }

    /// True when the engine takes checkpoints (`--resilience-dir`).
    pub fn checkpointing(&self) -> bool {
        self.core.config.resilience_dir.is_some()
    }

    /// The outcomes of the checkpoints from now on (a two-phase-commit sink commits or
    /// aborts its transaction on each).
    pub fn checkpoint_outcomes(&self) -> CheckpointOutcomes {
        outcomes_from_now(&self.core)
    }

    /// The id of the checkpoint the engine restarted from, if it did.
    pub fn restored_checkpoint(&self) -> Option<u64> {
        self.core.checkpoints.restored.borrow().checkpoint
    }

    /// The position the last complete checkpoint recorded for this sink on this shard, when
    /// the engine restarted from one: output past it is to be discarded (it will be made
    /// again).
    pub fn restored_position(&self) -> Option<u64> {
        let restored = self.core.checkpoints.restored.borrow();
        restored.positions.get(&self.name).copied()
    }
}

/// Outcomes of checkpoints newer than any whose outcome the shard already knows.
fn outcomes_from_now(core: &Rc<ShardCore>) -> CheckpointOutcomes {
    let seen = core
        .checkpoints
        .outcomes
        .borrow()
        .back()
        .map_or(0, |(id, _)| *id);
    CheckpointOutcomes {
        core: core.clone(),
        seen,
    }
}

/// A sink on the shard has pre-committed checkpoint `id`: the last one writes the shard's part.
pub(crate) fn precommitted(core: &Rc<ShardCore>, id: u64) {
    write_when_done(core, core.checkpoints.sink_done(id));
}

/// A sink's input has ended after barrier `last_barrier`: the checkpoints after it stop
/// waiting for the sink (see `ShardCheckpoints::sink_ended`).
pub(crate) fn sink_ended(core: &Rc<ShardCore>, last_barrier: Option<u64>) {
    write_when_done(core, core.checkpoints.sink_ended(last_barrier));
}

/// Writes this shard's part of a checkpoint that has everything it waited for.
fn write_when_done(core: &Rc<ShardCore>, done: Option<crate::runtime::checkpoints::InFlight>) {
    if let Some(done) = done {
        let core = core.clone();
        glommio::spawn_local(async move {
            core.checkpoints
                .write(core.index, done, &core.metrics.live)
                .await;
        })
        .detach();
    }
}
