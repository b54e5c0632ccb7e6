//! [`IterSource`]: every shard pulls its own share of the input from an iterator the host
//! made for it, on the shard's own thread.
//!
//! This is the in-process way to replay a stream that is already in memory or on disk (a
//! back-test, a benchmark; a capture of frames reads best through
//! [`Frames`](crate::codec::Frames), which reads ahead), and the in-process counterpart of a
//! TCP source with one listener per shard: no host thread and no ring stands between the data
//! and the shard that reads it. A message whose key another shard owns still crosses over the
//! `key_by` exchange, as it would from a TCP connection. For a host that produces messages as
//! they happen, on threads of its own, use [`InProcessSource`](crate::InProcessSource).
//!
//! Why it exists: Market Spread fed through an [`InProcessSource`](crate::InProcessSource)
//! costs a host thread per shard, and on a machine with as many cores as shards the pushers
//! and the shards share the cores. Pulling on the shard, 2 shards run on 2 cores
//! (figures in `perf/results/peer-latest.md`, the `bettong-iter` rows).

use std::future::Future;

use crate::connect::{Opened, Source, SourceContext};
use crate::error::Error;
use crate::event::Stamp;
use crate::metrics::now_ns;

/// Messages pulled, emitted and published per turn before the source lets the shard's other
/// tasks run (and reads the clock again: every message of a turn carries the turn's ingest
/// time, as every frame of one TCP read does).
///
/// 4096, not 1024: Market Spread on 2 shards (perf/peer `bettong-iter`, 16 M messages, 12
/// rounds alternating) ran at a median 39.6 M msgs/s against 34.3 M, faster in 10 of the 12
/// rounds, for the same instructions per message (316.1 -> 315.8, callgrind): each shard
/// drains what the other sent in a quarter as many, four times longer, runs. 1 shard: no
/// change beyond the noise. A turn is about 100 µs of Market Spread on this machine, which
/// bounds how long a stop waits for it and how stale a turn's ingest stamp gets.
const TURN: usize = 4096;

/// Messages handed over at a time to a downstream that [takes batches](SourceContext): a
/// `key_by` exchange, which sorts each batch by destination shard, or on 1 shard the state
/// computation itself, which runs a batch in one loop. The size of the
/// exchange's chunk (`runtime::split::CHUNK`): a batch stays in the L1 cache (16 KiB of
/// 64-byte messages; Market Spread's are 32) from the source's writes to the exchange's reads.
const BATCH: usize = crate::runtime::split::CHUNK;

/// A source that runs on every shard and pulls that shard's messages from an iterator:
/// `make(shard, shards)` is called once per shard when the engine starts (on the thread that
/// starts it) and the iterator it returns is moved to the shard. The source ends on a shard
/// when its iterator does; the stream ends when every shard's has. A stop ends it between two
/// turns of 4096 messages: what was pulled is finished, the rest is never read.
///
/// It records no position in checkpoints: an engine restored from one calls `make` again and
/// starts over, so for exactly-once replays use a file source (`--in NAME@file:PATH`), which
/// resumes at its checkpointed offset.
///
/// ```
/// use bettong::{Application, Engine, EngineConfig, IterSource, Pipeline, PolledSink};
///
/// // Shard s of n gets the numbers s, s+n, s+2n, ... below 100.
/// let numbers = IterSource::new(|shard, shards| (shard as u64..100).step_by(shards));
/// let (sink, mut outputs) = PolledSink::new(1024);
/// let app = Application::new(
///     "evens",
///     Pipeline::source("Numbers", numbers)
///         .to(|n: u64| (n % 2 == 0).then_some(n))
///         .to_sink("Evens", sink),
/// );
/// let config = EngineConfig { cores: vec![0, 1, 2], pin: false, ..EngineConfig::default() };
/// let engine = Engine::start(app, config).unwrap();
/// let summary = engine.join().unwrap(); // ends once every shard's iterator has
/// let mut evens = Vec::new();
/// outputs.poll(|n| evens.push(n));
/// evens.sort();
/// assert_eq!(evens, (0..100).step_by(2).collect::<Vec<u64>>());
/// assert_eq!(summary.messages_in, 100);
/// ```
pub struct IterSource<F> {
    make: F,
}

impl<F, I> IterSource<F>
where
    F: Fn(usize, usize) -> I + Send + Sync + 'static,
    I: IntoIterator,
    I::IntoIter: Send + 'static,
    I::Item: Send + 'static,
{
    /// A source whose shard `s` of `n` emits what `make(s, n)` yields.
    pub fn new(make: F) -> Self {
        IterSource { make }
    }
}

impl<F, I> Source for IterSource<F>
where
    F: Fn(usize, usize) -> I + Send + Sync + 'static,
    I: IntoIterator,
    I::IntoIter: Send + 'static,
    I::Item: Send + 'static,
{
    type Out = I::Item;
    type Part = I::IntoIter;

    fn open(
        &self,
        _name: &str,
        _address: Option<&str>,
        shards: usize,
    ) -> Result<Opened<I::IntoIter>, Error> {
        Ok(Opened::per_shard(shards, |s| {
            (self.make)(s, shards).into_iter()
        }))
    }

    fn run(
        &self,
        part: I::IntoIter,
        ctx: SourceContext<I::Item>,
    ) -> impl Future<Output = ()> + 'static {
        pull(part, ctx)
    }
}

/// Emits `part` on this shard, a turn at a time, until it ends or the engine stops.
async fn pull<I: Iterator>(mut part: I, ctx: SourceContext<I::Item>)
where
    I::Item: Send + 'static,
{
    // Asked once: which operator a source feeds is fixed when the shard is built.
    let batches = ctx.takes_batches();
    let mut batch = Vec::with_capacity(if batches { BATCH } else { 0 });
    loop {
        if ctx.is_stopping() {
            return;
        }
        let stamp = Stamp::at(now_ns());
        let pulled = turn(&mut part, &ctx, stamp, batches.then_some(&mut batch));
        // Counted once per turn, after it (two counter updates per message were 8 of the 33
        // instructions per message spent here): a reader on another thread may see some of
        // this turn's messages finished a moment before it sees them counted in.
        ctx.count_in_n(pulled as u64);
        ctx.flush();
        if pulled < TURN {
            return;
        }
        ctx.backpressure().await;
        // Let the shard's exchange drains run after every turn.
        ctx.yield_if_needed().await;
    }
}

/// Emits up to [`TURN`] messages of `part`, one by one or, with `batch`, in batches of
/// [`BATCH`]; returns how many.
///
/// One loop for both ways, choosing per message (a branch that always goes the same way):
/// with a loop for each, the iterator's `next` had two callers, LLVM stopped inlining it, and
/// Market Spread on 1 shard took 229.6 instructions per message against 196.6
/// (perf/callgrind.sh).
#[inline(never)]
fn turn<I: Iterator>(
    part: &mut I,
    ctx: &SourceContext<I::Item>,
    stamp: Stamp,
    mut batch: Option<&mut Vec<I::Item>>,
) -> usize
where
    I::Item: Send + 'static,
{
    let mut pulled = 0;
    for msg in part.by_ref().take(TURN) {
        pulled += 1;
        match batch.as_deref_mut() {
            None => ctx.emit(msg, stamp),
            Some(batch) => {
                batch.push(msg);
                if batch.len() == BATCH {
                    ctx.emit_batch(batch, stamp);
                }
            }
        }
    }
    if let Some(batch) = batch.filter(|b| !b.is_empty()) {
        ctx.emit_batch(batch, stamp);
    }
    pulled
}
