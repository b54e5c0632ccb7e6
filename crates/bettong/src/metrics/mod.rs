//! Latency histograms and counters, kept per shard and merged into one summary.
//!
//! Start-to-end latency follows Wallaroo's definition: from the moment a frame has been fully
//! read at a source to the moment its output is encoded into a sink buffer, or to the moment a
//! step filtered it out (so every input message is counted, not only those that produce output).
//! An in-process message is read when its shard takes it from the pusher's ring.
//!
//! The clock is read at the end of a message once per [`LATENCY_GROUP`] finished messages and
//! at the end of every batch (`ShardCore::flush`), not once per message: each message's
//! latency ends at the first clock read at or after it finished. A figure is therefore never
//! low, and at most the time to finish `LATENCY_GROUP - 1` more messages of the same batch
//! high (under a microsecond on Market Spread); a message that arrives alone is timed exactly.
//! A message that a state computation takes in a run or a batch (from a `key_by` exchange,
//! or on 1 shard from its source) and drops without output is counted finished at the end of
//! that run or batch (at most 256 messages, about 2.5 µs of Market Spread): one count per run
//! instead of one per message.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::{Arc, OnceLock};

use counts::LatencyCounts;
use hdrhistogram::Histogram;

mod counts;
pub(crate) mod exporter;
pub mod live;
pub mod prometheus;

pub use live::LiveCounters;
use live::{OperatorTimes, SinkCounters, SourceCounters};

/// Nanoseconds on the engine's monotonic clock (since the first call in this process).
///
/// Every message is stamped when its frame is read and again when it finishes, so this is on
/// the hot path twice per message: it reads the CPU's time-stamp counter (calibrated once
/// against the OS clock, via `quanta`), about a third of the cost of `clock_gettime` in a VM.
///
/// The scaling from counter ticks to ns is a multiplication by a factor fixed at the first
/// call (ns per 2³² ticks, taken from `quanta`'s calibration) and a constant shift. Why:
/// `quanta::Clock::delta_as_nanos` checks the order of its arguments, matches the clock kind
/// again and shifts by a variable amount (a 128-bit `shrd`); with the calibration's own
/// checks around it, the finish side of the latency record cost 79 instructions per output
/// (callgrind, `bench passthrough`, 1 shard). The difference from `quanta`'s scaling is below
/// 1 ns per 2³² ticks (over a second), and every engine timestamp goes through this function.
///
/// ```
/// let a = bettong::metrics::now_ns();
/// assert!(bettong::metrics::now_ns() >= a);
/// ```
#[inline]
pub fn now_ns() -> u64 {
    let c = CLOCK.get_or_init(EngineClock::new);
    scale(c.clock.raw().saturating_sub(c.start), c.ns_per_2_32_ticks)
}

/// `ticks` in ns, at `ns_per_2_32_ticks` ns per 2³² ticks.
#[inline]
fn scale(ticks: u64, ns_per_2_32_ticks: u64) -> u64 {
    ((u128::from(ticks) * u128::from(ns_per_2_32_ticks)) >> 32) as u64
}

/// The counter, its reading at the first call, and its rate.
struct EngineClock {
    clock: quanta::Clock,
    start: u64,
    /// Nanoseconds per 2³² ticks (2³² when the counter already counts ns).
    ns_per_2_32_ticks: u64,
}

impl EngineClock {
    fn new() -> Self {
        let clock = quanta::Clock::new();
        let start = clock.raw();
        let ns_per_2_32_ticks = clock.delta_as_nanos(0, 1 << 32);
        EngineClock {
            clock,
            start,
            ns_per_2_32_ticks,
        }
    }
}

static CLOCK: OnceLock<EngineClock> = OnceLock::new();

/// The wall-clock time (nanoseconds since the Unix epoch) of an instant on the engine clock:
/// one addition, with the offset between the two clocks taken once.
///
/// ```
/// let now = bettong::metrics::now_ns();
/// let wall = bettong::metrics::wall_clock_ns(now);
/// assert!(wall > 1_600_000_000_000_000_000);
/// ```
#[inline]
pub fn wall_clock_ns(engine_ns: u64) -> u64 {
    let offset = *WALL_OFFSET.get_or_init(|| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        wall.saturating_sub(now_ns())
    });
    engine_ns.saturating_add(offset)
}

static WALL_OFFSET: OnceLock<u64> = OnceLock::new();

/// The highest latency a histogram tracks exactly (60 s); larger values are clamped.
const MAX_TRACKED_NS: u64 = 60_000_000_000;

fn new_histogram() -> Histogram<u64> {
    // 3 significant figures: 0.1% resolution from 1 ns to 60 s, a fixed ~200 KB per histogram.
    Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3).expect("valid histogram bounds")
}

/// Progress summed over shards: frames accepted and messages finished (output or filtered).
///
/// ```
/// let p = bettong::metrics::Progress::default();
/// assert_eq!((p.messages_in, p.messages_out, p.finished), (0, 0, 0));
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Frames accepted at sources.
    pub messages_in: u64,
    /// Outputs encoded into sink buffers.
    pub messages_out: u64,
    /// Outputs encoded plus messages filtered.
    pub finished: u64,
}

/// Reads the live counters of every shard.
pub(crate) fn progress(shards: &[Arc<LiveCounters>]) -> Progress {
    let mut p = Progress::default();
    for s in shards {
        p.messages_in += s.messages_in.get();
        p.messages_out += s.messages_out.get();
        p.finished += s.finished.get();
    }
    p
}

/// One shard's measurements. Only its own shard writes them: the counters live in
/// [`LiveCounters`] (single-writer atomics other threads may read), the detailed hdr histograms
/// in cells.
pub struct ShardMetrics {
    pub(crate) live: Arc<LiveCounters>,
    /// Latency of the current reporting period (see `take_period`): plain counts, copied
    /// into an hdr histogram once per period (see `counts`).
    latency: LatencyCounts,
    /// Latency of the periods already taken.
    earlier: RefCell<Histogram<u64>>,
    /// Time per computation (sampled), by registration order, for the current period.
    computations: RefCell<Vec<(String, Histogram<u64>)>>,
    /// Finished messages whose latency waits for the next clock read (`settle_latency`), as
    /// runs of equal ingest stamps (`(stamp, messages)`; a batch's messages share one, so a
    /// group is usually one run): the run that is growing in `current` (it may have no
    /// messages yet: a settle empties it and keeps its stamp), the ones before it in
    /// `pending[..runs]`; `waiting` messages in all, always fewer than
    /// `LATENCY_GROUP`. The growing run has cells of its own so that a message that joins it
    /// (nearly every message) compares one stamp and counts one more, with no index.
    pending: [Cell<(u64, u64)>; LATENCY_GROUP],
    runs: Cell<usize>,
    current: Cell<(u64, u64)>,
    waiting: Cell<usize>,
    /// How many of the `waiting` messages were filtered; the rest are outputs.
    filtered_waiting: Cell<usize>,
}

/// Finished messages per clock read (see the module docs). The read (`rdtsc`) took 13 ns on
/// this machine's vCPUs when 8 was chosen, a quarter of the 53 ns per message of Market
/// Spread on 1 shard then (figures in the commit that chose it), and 16 when it took 18-19 ns
/// (a C loop of `__rdtsc`). 64 since a Market Spread message came to cost the shard about
/// 20 ns, as much as one read, while each settle also records into two histograms. perf/peer `bettong-iter`, 1 shard, 8 alternating rounds with the computation
/// sample at 256 in both (`COMPUTATION_SAMPLE`): 44.3 -> 48.5 M msgs/s median, best-3 CPU per
/// message 19.4-20.2 -> 16.9-17.9 ns; callgrind 196.2 -> 192.0 instructions per message (a
/// read counts as one there). A figure is at most 63 messages' work high: about 1.3 µs of
/// passthrough, 1.3-2 µs of Market Spread, where a blast's latencies are tens of µs to
/// milliseconds; a paced message arrives alone and is timed exactly.
pub const LATENCY_GROUP: usize = 64;

/// One in this many messages has each computation timed (the first message among them): two
/// clock reads per computation on every message would cost more than most computations
/// themselves. 16 until it was measured: the two reads (`rdtsc`, 18-20 ns each on this
/// machine's vCPUs) cost 2.4 ns per message per computation spread over 16, more than a
/// tenth of a Market Spread message's 20 ns on 1 shard. perf/peer `bettong-iter`, 1 shard,
/// 8 alternating rounds: 39.8 -> 44.3 M msgs/s median, best-3 CPU per message 20.9-22.1 ->
/// 19.4-20.2 ns; callgrind 204.6 -> 196.2 instructions per message (the timed path, with its
/// two histogram records, out of the loop). At 256, a computation that sees 1 000 messages a
/// second is still timed about 4 times a second on each shard.
const COMPUTATION_SAMPLE: u32 = 256;

/// Times one computation of the pipeline on a sample of its messages.
pub(crate) struct ComputationTimer {
    index: usize,
    metrics: std::rc::Rc<ShardMetrics>,
    live: Arc<OperatorTimes>,
    count: Cell<u32>,
}

impl ComputationTimer {
    /// Registers the computation `name` with the shard's metrics.
    pub(crate) fn new(metrics: std::rc::Rc<ShardMetrics>, name: &str) -> Self {
        let mut list = metrics.computations.borrow_mut();
        let index = list.len();
        list.push((name.to_string(), new_histogram()));
        drop(list);
        let live = metrics.live.operator(name);
        ComputationTimer {
            index,
            metrics,
            live,
            // The first message is timed, so that a computation that sees few has a figure.
            count: Cell::new(COMPUTATION_SAMPLE - 1),
        }
    }

    /// Runs `f`, timing it one time in `COMPUTATION_SAMPLE`.
    ///
    /// The timed call is out of line: with both calls of `f` in this body, LLVM stopped
    /// inlining it into a state computation's loop over a source's batch, and each message
    /// paid a call with its prologue (callgrind).
    #[inline(always)]
    pub(crate) fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        let n = self.count.get().wrapping_add(1);
        self.count.set(n);
        if n % COMPUTATION_SAMPLE != 0 {
            return f();
        }
        self.timed(f)
    }

    /// `f`, timed, and the time recorded.
    #[cold]
    #[inline(never)]
    fn timed<R>(&self, f: impl FnOnce() -> R) -> R {
        let start = now_ns();
        let r = f();
        let took = (now_ns() - start).clamp(1, MAX_TRACKED_NS);
        if let Some((_, h)) = self.metrics.computations.borrow_mut().get_mut(self.index) {
            h.saturating_record(took);
        }
        self.live.latency.record(took);
        r
    }
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics::for_shard(0)
    }
}

impl ShardMetrics {
    /// The measurements of shard `index`.
    pub fn for_shard(index: usize) -> Self {
        ShardMetrics {
            live: Arc::new(LiveCounters::new(index)),
            latency: LatencyCounts::new(MAX_TRACKED_NS),
            earlier: RefCell::new(new_histogram()),
            computations: RefCell::new(Vec::new()),
            pending: std::array::from_fn(|_| Cell::new((0, 0))),
            runs: Cell::new(0),
            current: Cell::new((0, 0)),
            waiting: Cell::new(0),
            filtered_waiting: Cell::new(0),
        }
    }

    /// The counters this shard publishes for other threads.
    pub fn live(&self) -> &Arc<LiveCounters> {
        &self.live
    }

    /// The counters of this shard's source `name` (registered on first use: call it when
    /// the source starts, and keep them).
    pub fn source(&self, name: &str) -> Arc<SourceCounters> {
        self.live.source(name)
    }

    /// The counters of this shard's sink `name` (registered on first use).
    pub fn sink(&self, name: &str) -> Arc<SinkCounters> {
        self.live.sink(name)
    }

    /// A source read and accepted one frame.
    #[inline]
    pub fn message_in(&self) {
        self.live.messages_in.inc();
    }

    /// Source `source` read and accepted one frame.
    #[inline]
    pub fn message_in_from(&self, source: &SourceCounters) {
        self.messages_in_from(source, 1);
    }

    /// Source `source` read and accepted `n` frames.
    #[inline]
    pub fn messages_in_from(&self, source: &SourceCounters, n: u64) {
        self.live.messages_in.add(n);
        source.messages_in.add(n);
    }

    /// A source accepted a connection.
    pub fn connection(&self) {
        self.live.connections.inc();
    }

    /// Source `source` accepted a connection (it is open until [`closed`](Self::closed)).
    pub fn connection_from(&self, source: &SourceCounters) {
        self.live.connections.inc();
        source.connections.inc();
        source.open.inc();
    }

    /// A connection of `source` ended.
    pub fn closed(&self, source: &SourceCounters) {
        source.open.dec();
    }

    /// A decoder rejected a payload.
    pub fn decode_error(&self) {
        self.live.decode_errors.inc();
    }

    /// The decoder of `source` rejected a payload.
    pub fn decode_error_from(&self, source: &SourceCounters) {
        self.live.decode_errors.inc();
        source.decode_errors.inc();
    }

    /// A frame header was over `--max-frame`; its connection was closed.
    pub fn frame_error(&self) {
        self.live.frame_errors.inc();
    }

    /// A frame header at `source` was over `--max-frame`; its connection was closed.
    pub fn frame_error_from(&self, source: &SourceCounters) {
        self.live.frame_errors.inc();
        source.frame_errors.inc();
    }

    /// A connection ended in the middle of a frame.
    pub fn truncated(&self) {
        self.live.truncated.inc();
    }

    /// A connection of `source` ended in the middle of a frame.
    pub fn truncated_from(&self, source: &SourceCounters) {
        self.live.truncated.inc();
        source.truncated.inc();
    }

    /// A source or drain stopped reading because a ring or sink buffer downstream was full.
    pub fn pause(&self) {
        self.live.pauses.inc();
    }

    /// A pause (see [`pause`](Self::pause)) ended after `ns`.
    pub fn paused_for(&self, ns: u64) {
        self.live.paused_ns.add(ns);
    }

    /// What a TCP sink's writer did, once it has ended: outputs it could not deliver (they
    /// were counted by [`output`](Self::output) when encoded, and are taken off `out` in the
    /// summary), and what it sent again after reconnecting.
    pub(crate) fn sink_report(&self, r: crate::net::sink::SinkReport) {
        self.live.undelivered.add(r.undelivered);
        self.live.resent_messages.add(r.resent_messages);
        self.live.resent_bytes.add(r.resent_bytes);
        self.live.reconnects.add(r.reconnects);
    }

    /// Source connections still open at the drain timeout, which the stop cut.
    /// A window dropped a late message.
    pub(crate) fn late(&self) {
        self.live.late.add(1);
    }

    pub(crate) fn cut_connections(&self, n: u64) {
        self.live.cut_connections.add(n);
    }

    /// An output was encoded into a sink buffer; `ingest_ns` is when its input was read.
    /// It is counted in `messages_out` when its latency is settled, with the others waiting:
    /// a counter update per message was a store to a line that other threads read, and
    /// 1.2 instructions (callgrind, `bench passthrough --shards 1`: 207.9 -> 206.7).
    #[inline]
    pub fn output(&self, ingest_ns: u64) {
        self.record(ingest_ns);
    }

    /// A step dropped a message (no output); it is finished as of now.
    #[inline]
    pub fn filtered(&self, ingest_ns: u64) {
        // Counted in `live.filtered` at the settle, with the rest of its group, as `finished`
        // is: the count's load and store into the shared counters came off every filtered
        // message (callgrind, the figures in the commit).
        self.filtered_n(ingest_ns, 1);
    }

    /// `n` messages of one stamp dropped with no output, finished as of now: what a state
    /// computation counts once at the end of a run or batch it takes.
    #[inline]
    pub(crate) fn filtered_n(&self, ingest_ns: u64, n: usize) {
        self.filtered_waiting.set(self.filtered_waiting.get() + n);
        self.record_n(ingest_ns, n);
    }

    /// A message finished. It is counted in `finished` when its latency is settled (at most
    /// `LATENCY_GROUP - 1` messages later, and at the end of its batch): the count of the
    /// messages waiting is kept anyway, and one add per group saves a counter update per
    /// message.
    #[inline]
    fn record(&self, ingest_ns: u64) {
        self.record_n(ingest_ns, 1);
    }

    /// [`record`](Self::record) for `k` messages of one stamp. Each call adds at most one
    /// run to `pending` and settles once `waiting` reaches `LATENCY_GROUP`, so `pending` never
    /// fills: before a call, `runs` is below `waiting`, which is below `LATENCY_GROUP`.
    #[inline(always)]
    fn record_n(&self, ingest_ns: u64, k: usize) {
        let k64 = k as u64;
        let (stamp, n) = self.current.get();
        // No `n > 0` here: a settle keeps the run's stamp, so the message after it joins the
        // run like any other. With the test, the branch went the other way once per group,
        // after every settle, and was mispredicted that often (callgrind's branch simulation,
        // perf/callgrind.sh's table across shards).
        if stamp == ingest_ns {
            self.current.set((stamp, n + k64));
        } else {
            if n > 0 {
                let runs = self.runs.get();
                // `runs + 1` runs hold `waiting` messages, fewer than `LATENCY_GROUP`, so there
                // is room: the check only keeps a broken count from indexing out of bounds.
                if let Some(run) = self.pending.get(runs) {
                    run.set((stamp, n));
                    self.runs.set(runs + 1);
                }
            }
            self.current.set((ingest_ns, k64));
        }
        let waiting = self.waiting.get() + k;
        self.waiting.set(waiting);
        if waiting >= LATENCY_GROUP {
            self.settle_latency();
        }
    }

    /// Reads the clock and records the latency of every finished message still waiting for
    /// one, and counts them finished. The shard calls it at the end of every batch; the
    /// summaries call it first.
    pub fn settle_latency(&self) {
        let (stamp, n) = self.current.get();
        if n == 0 {
            return;
        }
        // The stamp stays: the next message of the same batch joins the run at once.
        self.current.set((stamp, 0));
        let waiting = self.waiting.replace(0);
        let filtered = self.filtered_waiting.replace(0);
        self.live.filtered.add(filtered as u64);
        self.live.finished.add(waiting as u64);
        self.live
            .messages_out
            .add(waiting.saturating_sub(filtered) as u64);
        let now = now_ns();
        let record = |(stamp, n): (u64, u64)| {
            let v = now.saturating_sub(stamp).clamp(1, MAX_TRACKED_NS);
            self.latency.record_n(v, n);
            self.live.latency.record_n(v, n);
        };
        for run in self.pending.iter().take(self.runs.replace(0)) {
            record(run.get());
        }
        record((stamp, n));
    }

    /// Ends the current reporting period: returns its latency histogram and counters (since
    /// the previous call) and starts a new one. The totals in `snapshot` still cover it.
    pub fn take_period(&self) -> Period {
        self.settle_latency();
        let mut current = new_histogram();
        self.latency.move_into(&mut current, true);
        let _ = self.earlier.borrow_mut().add(&current);
        let mut computations = self.computations.borrow_mut();
        let period = Period {
            latency: current,
            messages_in: self.live.messages_in.get(),
            messages_out: self.live.messages_out.get(),
            computations: computations.clone(),
        };
        for (_, h) in computations.iter_mut() {
            h.reset();
        }
        period
    }

    /// A copy of the measurements so far, to merge across shards.
    pub fn snapshot(&self) -> Summary {
        self.settle_latency();
        let mut latency = self.earlier.borrow().clone();
        self.latency.move_into(&mut latency, false);
        let l = &self.live;
        Summary {
            latency,
            messages_in: l.messages_in.get(),
            // Encoded minus never delivered: once the sinks have ended, what was delivered.
            messages_out: l.messages_out.get().saturating_sub(l.undelivered.get()),
            filtered: l.filtered.get(),
            decode_errors: l.decode_errors.get(),
            frame_errors: l.frame_errors.get(),
            truncated: l.truncated.get(),
            connections: l.connections.get(),
            pauses: l.pauses.get(),
            state_entities: Vec::new(),
            undelivered: l.undelivered.get(),
            resent_messages: l.resent_messages.get(),
            resent_bytes: l.resent_bytes.get(),
            reconnects: l.reconnects.get(),
            cut_connections: l.cut_connections.get(),
            late: l.late.get(),
        }
    }
}

/// Measurements merged over shards: what the engine prints when it exits.
///
/// ```
/// let s = bettong::metrics::Summary::default();
/// assert_eq!(s.messages_in, 0);
/// assert!(s.to_string().contains("messages in 0"));
/// ```
#[derive(Clone)]
pub struct Summary {
    /// Start-to-end latency in ns.
    pub latency: Histogram<u64>,
    /// Frames accepted at sources.
    pub messages_in: u64,
    /// Outputs delivered: encoded into a sink and, for a TCP sink, acknowledged by the TCP of
    /// a sink connection (outputs the stop gave up on are left out: see `undelivered`). The
    /// live figures (`Progress`, the periodic lines) count outputs as they are encoded.
    pub messages_out: u64,
    /// Messages a step dropped without output.
    pub filtered: u64,
    /// Payloads a decoder rejected.
    pub decode_errors: u64,
    /// Connections closed for a frame over `--max-frame`.
    pub frame_errors: u64,
    /// Connections that ended in the middle of a frame.
    pub truncated: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Times a source or drain waited for a full ring or sink buffer (backpressure).
    pub pauses: u64,
    /// State entities held at the end, per state operator (summed over shards).
    pub state_entities: Vec<(String, u64)>,
    /// Outputs that no sink connection acknowledged before the stop's drain timeout ran out.
    pub undelivered: u64,
    /// Outputs a TCP sink sent again after its connection failed (the old peer may have
    /// received some of them: duplicates are possible, never losses).
    pub resent_messages: u64,
    /// Bytes sent again after reconnecting.
    pub resent_bytes: u64,
    /// Sink connections lost and made again.
    pub reconnects: u64,
    /// Source connections still open at the drain timeout, which the stop cut.
    pub cut_connections: u64,
    /// Messages windows dropped as late (`LatePolicy::Drop`).
    pub late: u64,
}

impl Default for Summary {
    fn default() -> Self {
        ShardMetrics::default().snapshot()
    }
}

impl Summary {
    /// Adds another shard's measurements to these.
    pub fn merge(&mut self, other: &Summary) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.messages_in += other.messages_in;
        self.messages_out += other.messages_out;
        self.filtered += other.filtered;
        self.decode_errors += other.decode_errors;
        self.frame_errors += other.frame_errors;
        self.truncated += other.truncated;
        self.connections += other.connections;
        self.pauses += other.pauses;
        self.undelivered += other.undelivered;
        self.resent_messages += other.resent_messages;
        self.resent_bytes += other.resent_bytes;
        self.reconnects += other.reconnects;
        self.cut_connections += other.cut_connections;
        self.late += other.late;
        for (name, n) in &other.state_entities {
            self.add_state(name, *n);
        }
    }

    /// Adds `entities` to the count of state operator `name`.
    pub fn add_state(&mut self, name: &str, entities: u64) {
        match self.state_entities.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total += entities,
            None => self.state_entities.push((name.to_string(), entities)),
        }
    }

    /// All errors of every kind.
    pub fn errors(&self) -> u64 {
        self.decode_errors + self.frame_errors + self.truncated
    }

    /// Start-to-end latency at quantile `q` (0.0–1.0) in ns; 0 with no samples.
    pub fn latency_at(&self, q: f64) -> u64 {
        if self.latency.is_empty() {
            0
        } else {
            self.latency.value_at_quantile(q)
        }
    }
}

/// One shard's measurements over one reporting period.
#[derive(Clone)]
pub struct Period {
    /// Start-to-end latency of the messages finished in the period.
    pub latency: Histogram<u64>,
    /// Frames accepted since the engine started (the period's count is the difference).
    pub messages_in: u64,
    /// Outputs since the engine started.
    pub messages_out: u64,
    /// Time per computation in the period (one message in 256 timed), in pipeline order.
    pub computations: Vec<(String, Histogram<u64>)>,
}

/// Wallaroo's power-of-two bins: `(i, n)` means `n` values had bit length `i`, that is
/// `2^(i-1) <= v < 2^i` (shown as "≤ 2^i ns"). Only non-empty bins are listed.
///
/// ```
/// let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
/// h.record(3).unwrap();
/// h.record(1000).unwrap();
/// assert_eq!(bettong::metrics::power_of_two_bins(&h), vec![(2, 1), (10, 1)]);
/// ```
pub fn power_of_two_bins(h: &Histogram<u64>) -> Vec<(u32, u64)> {
    let mut bins = [0u64; 65];
    for v in h.iter_recorded() {
        let value = h.lowest_equivalent(v.value_iterated_to());
        bins[(64 - value.leading_zeros()) as usize] += v.count_at_value();
    }
    bins.iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (i as u32, *n))
        .collect()
}

/// Writes a latency in the unit that keeps it readable (`850ns`, `12.3µs`, `4.56ms`).
pub fn format_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns}ns"),
        10_000..=999_999 => format!("{:.1}µs", ns as f64 / 1e3),
        1_000_000..=9_999_999_999 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "messages in {}, out {}, filtered {}, connections {}, backpressure pauses {}",
            self.messages_in, self.messages_out, self.filtered, self.connections, self.pauses
        )?;
        writeln!(
            f,
            "errors: decode {}, oversized frame {}, cut mid-frame {}, late {}",
            self.decode_errors, self.frame_errors, self.truncated, self.late
        )?;
        writeln!(
            f,
            "delivery: undelivered {}, resent {}, resent bytes {}, sink reconnects {}, cut connections {}",
            self.undelivered,
            self.resent_messages,
            self.resent_bytes,
            self.reconnects,
            self.cut_connections
        )?;
        write!(
            f,
            "start-to-end latency: p50 {} p99 {} p99.9 {} p99.99 {} max {} ({} samples)",
            format_ns(self.latency_at(0.5)),
            format_ns(self.latency_at(0.99)),
            format_ns(self.latency_at(0.999)),
            format_ns(self.latency_at(0.9999)),
            format_ns(self.latency.max()),
            self.latency.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_counts_and_latency() {
        let a = ShardMetrics::default();
        let b = ShardMetrics::default();
        let t = now_ns();
        a.message_in();
        a.output(t);
        b.message_in();
        b.filtered(t);
        b.decode_error();
        let mut s = a.snapshot();
        s.merge(&b.snapshot());
        assert_eq!((s.messages_in, s.messages_out, s.filtered), (2, 1, 1));
        assert_eq!(s.errors(), 1);
        assert_eq!(s.latency.len(), 2);
    }

    /// Runs of filtered messages counted at once (a state computation's run from an exchange)
    /// are finished and timed as many single ones would be: runs longer than a group, runs of
    /// new stamps between outputs, and many short runs of changing stamps (which fill
    /// `pending` fastest).
    #[test]
    fn runs_of_filtered_messages_are_counted_and_timed_like_single_ones() {
        let m = ShardMetrics::default();
        let t = now_ns();
        m.output(t);
        m.filtered_n(t, 3);
        m.filtered_n(t + 1, LATENCY_GROUP + 5);
        m.output(t + 2);
        m.filtered_n(t + 3, 1);
        let mut filtered = 3 + LATENCY_GROUP + 5 + 1;
        for i in 0..1000 {
            m.filtered_n(t + 4 + i as u64, 1 + i % 7);
            filtered += 1 + i % 7;
        }
        m.settle_latency();
        let s = m.snapshot();
        assert_eq!((s.messages_out, s.filtered), (2, filtered as u64));
        assert_eq!(s.latency.len(), filtered as u64 + 2);
    }

    /// A computation is timed on its first message and then on one message in
    /// `COMPUTATION_SAMPLE`, and every call runs the computation exactly once.
    #[test]
    fn a_computation_is_timed_on_its_first_message_then_one_in_the_sample() {
        let m = std::rc::Rc::new(ShardMetrics::default());
        let timer = ComputationTimer::new(m.clone(), "check");
        let timed = |m: &ShardMetrics| m.computations.borrow()[0].1.len();
        let runs = Cell::new(0u32);
        timer.time(|| runs.set(runs.get() + 1));
        assert_eq!(timed(&m), 1, "the first message is timed");
        for _ in 1..COMPUTATION_SAMPLE {
            timer.time(|| runs.set(runs.get() + 1));
        }
        assert_eq!(timed(&m), 1, "none more until the sample comes round");
        timer.time(|| runs.set(runs.get() + 1));
        assert_eq!(timed(&m), 2);
        for _ in 0..3 * COMPUTATION_SAMPLE {
            timer.time(|| runs.set(runs.get() + 1));
        }
        assert_eq!(timed(&m), 5);
        assert_eq!(runs.get(), 4 * COMPUTATION_SAMPLE + 1);
    }

    /// The clock is read once per group and at the end of a batch: every finished message gets
    /// its latency, none shorter than it really was.
    #[test]
    fn latency_is_read_per_group_and_never_low() {
        let m = ShardMetrics::default();
        let live_count = |m: &ShardMetrics| m.live.latency.read().0.iter().sum::<u64>();
        // Messages that have been in flight for at least 2 ms when they finish.
        let ingest = now_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        for _ in 0..LATENCY_GROUP - 1 {
            m.output(ingest);
        }
        assert_eq!(live_count(&m), 0, "waits for the group's clock read");
        m.filtered(ingest);
        assert_eq!(live_count(&m), LATENCY_GROUP as u64);
        m.output(ingest);
        m.settle_latency();
        assert_eq!(
            live_count(&m),
            LATENCY_GROUP as u64 + 1,
            "the batch end settles"
        );
        m.output(ingest);
        let s = m.snapshot();
        assert_eq!(s.latency.len(), LATENCY_GROUP as u64 + 2);
        assert!(s.latency.min() >= 1_998_000, "{}", s.latency.min());
        // A group with runs of different stamps keeps each run's own latency.
        let m = ShardMetrics::default();
        let fresh = now_ns();
        for stamp in [ingest, ingest, fresh, ingest, fresh] {
            m.output(stamp);
        }
        let s = m.snapshot();
        assert_eq!(s.latency.len(), 5);
        assert!(
            s.latency.value_at_quantile(0.4) < 1_998_000,
            "{}",
            s.latency.min()
        );
        assert!(s.latency.value_at_quantile(0.6) >= 1_998_000);
        // A settle keeps the run's stamp with no messages in it: a message with another stamp
        // then starts its own run, and the empty one is never recorded. (The other stamp is an
        // hour ahead, so its latency is the 1 ns floor however slow this machine is.)
        let m = ShardMetrics::default();
        for _ in 0..LATENCY_GROUP {
            m.output(ingest);
        }
        m.output(now_ns() + 3_600_000_000_000);
        let s = m.snapshot();
        assert_eq!(s.latency.len(), LATENCY_GROUP as u64 + 1);
        assert_eq!(s.latency.min(), 1);
        assert_eq!(
            s.latency.count_between(1_998_000, u64::MAX),
            LATENCY_GROUP as u64
        );
    }

    /// A latency below 1 ns (an ingest stamp later than the finish, as between cores whose
    /// counters differ slightly) or above the tracked maximum counts at the bound.
    #[test]
    fn out_of_range_latencies_count_at_the_bounds() {
        let m = ShardMetrics::default();
        m.output(u64::MAX);
        m.filtered(0);
        let s = m.snapshot();
        assert_eq!(s.latency.len(), 2);
        assert_eq!(s.latency.min(), 1);
        // Under a test binary the engine clock has run for far less than 60 s.
        assert!(s.latency.max() < MAX_TRACKED_NS);
    }

    /// The fixed-factor scaling gives what `quanta`'s own scaling gives for the same ticks, to
    /// within 1 ns per 2³² ticks, from one tick to over a day.
    #[test]
    fn scaling_matches_quanta() {
        let clock = quanta::Clock::new();
        let factor = clock.delta_as_nanos(0, 1 << 32);
        let mut ticks = 1u64;
        while ticks < 1 << 48 {
            for t in [ticks, ticks + ticks / 3] {
                let ours = scale(t, factor);
                let theirs = clock.delta_as_nanos(0, t);
                let allowed = 1 + t / (1 << 32);
                assert!(
                    ours.abs_diff(theirs) <= allowed,
                    "{t} ticks: {ours} vs {theirs} ns"
                );
            }
            ticks *= 2;
        }
        assert_eq!(scale(0, factor), 0);
        assert_eq!(scale(12_345, 1 << 32), 12_345);
    }

    #[test]
    fn formats_units() {
        assert_eq!(format_ns(850), "850ns");
        assert_eq!(format_ns(12_345), "12.3µs");
        assert_eq!(format_ns(45_600_000), "45.60ms");
    }
}
