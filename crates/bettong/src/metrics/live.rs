//! What a shard publishes for other threads while it runs: counters and power-of-two latency
//! histograms in atomics, by shard, source, sink and operator. The progress of a benchmark and
//! the Prometheus exporter read them.
//!
//! Each value has one writer, the shard that owns it, so an update is a relaxed load and store
//! (a plain `mov` on x86), never a locked read-modify-write; readers see a value at most a few
//! updates old. The per-source, per-sink and per-operator sets are registered once, when the
//! shard builds its plan (the only time their lists are locked, apart from a reader listing
//! them): the hot path holds its set directly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A count that only its shard changes.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one.
    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1)
    }

    /// Takes one away (a gauge going down), never below zero.
    #[inline]
    pub(crate) fn dec(&self) {
        self.0.store(
            self.0.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
    }

    /// Sets the value (a gauge, or a running total kept elsewhere).
    #[inline]
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed)
    }

    /// The value now.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Buckets of a [`Pow2Histogram`]: bucket `k` counts values `v` with `2^(k-1) < v <= 2^k` ns
/// (bucket 0: `v <= 1`), for `k` up to 36 (2^36 ns ≈ 68.7 s, above the 60 s latencies are
/// clamped to).
pub const POW2_BUCKETS: usize = 37;

/// A histogram of nanosecond values in power-of-two buckets, Wallaroo's bins: bucket `k` holds
/// what is `<= 2^k` ns and above `2^(k-1)`, so the buckets are exactly Prometheus's cumulative
/// `le="2^k"` buckets once summed. Recording is a bit scan and two relaxed stores.
///
/// ```
/// use bettong::metrics::live::Pow2Histogram;
/// let h = Pow2Histogram::default();
/// h.record(1);
/// h.record(3);
/// h.record(4);
/// h.record(1000);
/// let (buckets, sum) = h.read();
/// assert_eq!((buckets[0], buckets[2], buckets[10]), (1, 2, 1));
/// assert_eq!(sum, 1008);
/// ```
#[derive(Debug)]
pub struct Pow2Histogram {
    buckets: [Counter; POW2_BUCKETS],
    sum: Counter,
}

impl Default for Pow2Histogram {
    fn default() -> Self {
        Pow2Histogram {
            buckets: std::array::from_fn(|_| Counter::default()),
            sum: Counter::default(),
        }
    }
}

impl Pow2Histogram {
    /// The bucket of `v` ns: the smallest `k` with `v <= 2^k`, at most 36.
    #[inline]
    pub fn bucket(v: u64) -> usize {
        if v <= 1 {
            0
        } else {
            ((64 - (v - 1).leading_zeros()) as usize).min(POW2_BUCKETS - 1)
        }
    }

    /// Counts one value (ns).
    #[inline]
    pub fn record(&self, v: u64) {
        self.record_n(v, 1);
    }

    /// Counts `n` values of `v` ns.
    #[inline]
    pub fn record_n(&self, v: u64, n: u64) {
        self.buckets[Self::bucket(v)].add(n);
        self.sum.add(v.wrapping_mul(n));
    }

    /// The count per bucket (not cumulative) and the sum of the values.
    pub fn read(&self) -> ([u64; POW2_BUCKETS], u64) {
        let mut b = [0; POW2_BUCKETS];
        for (out, c) in b.iter_mut().zip(&self.buckets) {
            *out = c.get();
        }
        (b, self.sum.get())
    }
}

/// One source's counters on one shard.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// The source's name.
    pub name: String,
    /// Frames (messages) accepted.
    pub messages_in: Counter,
    /// Payloads the decoder rejected.
    pub decode_errors: Counter,
    /// Connections closed for a frame over `--max-frame`.
    pub frame_errors: Counter,
    /// Connections that ended in the middle of a frame.
    pub truncated: Counter,
    /// Connections accepted.
    pub connections: Counter,
    /// Connections open now (a gauge).
    pub open: Counter,
    /// Connections still open at the drain timeout, which the stop cut.
    pub cut: Counter,
    /// Messages a connector source dropped as replays of what it had processed.
    pub duplicates: Counter,
}

/// One sink's counters on one shard (sinks that keep them: the TCP sink).
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// The sink's name.
    pub name: String,
    /// Outputs encoded into the sink's buffer, counted a batch at a time as the writer takes
    /// them (or gives them up).
    pub messages: Counter,
    /// Outputs no sink connection acknowledged before the drain timeout.
    pub undelivered: Counter,
    /// Outputs sent again after a reconnect.
    pub resent_messages: Counter,
    /// Bytes sent again after a reconnect.
    pub resent_bytes: Counter,
    /// Connections lost and made again.
    pub reconnects: Counter,
    /// 1 while the shard has a connection to the sink (a gauge).
    pub connected: Counter,
}

/// One operator's time per message on one shard (one message in 256 timed).
#[derive(Debug, Default)]
pub struct OperatorTimes {
    /// The operator's name.
    pub name: String,
    /// Time per timed message, ns.
    pub latency: Pow2Histogram,
}

/// Everything one shard publishes for other threads to read while it runs.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// The shard's index.
    pub shard: usize,
    /// Frames accepted at sources.
    pub messages_in: Counter,
    /// Outputs encoded into sink buffers, counted when their latency is settled (as
    /// `finished` is).
    pub messages_out: Counter,
    /// Outputs encoded plus messages filtered, counted when their latency is settled: at
    /// most 63 messages and one batch after they finish (`ShardMetrics::settle_latency`).
    pub finished: Counter,
    /// Messages a step dropped without output, counted when their latency is settled (as
    /// `finished` is).
    pub filtered: Counter,
    /// Payloads a decoder rejected.
    pub decode_errors: Counter,
    /// Connections closed for a frame over `--max-frame`.
    pub frame_errors: Counter,
    /// Connections that ended in the middle of a frame.
    pub truncated: Counter,
    /// Connections accepted.
    pub connections: Counter,
    /// Times a source or drain waited for a full ring or sink buffer.
    pub pauses: Counter,
    /// Time spent waiting so, ns (summed over the waiting tasks).
    pub paused_ns: Counter,
    /// Delivery by the TCP sinks (final once they have ended).
    pub undelivered: Counter,
    /// Outputs sent again after a reconnect (final once the sinks have ended).
    pub resent_messages: Counter,
    /// Bytes sent again after a reconnect (final once the sinks have ended).
    pub resent_bytes: Counter,
    /// Sink connections lost and made again (final once the sinks have ended).
    pub reconnects: Counter,
    /// Source connections cut at the drain timeout.
    pub cut_connections: Counter,
    /// Messages a window dropped as late (every window they belonged to had fired).
    pub late: Counter,
    /// Checkpoints whose shard part this shard wrote.
    pub checkpoint_parts: Counter,
    /// Bytes of those parts.
    pub checkpoint_bytes: Counter,
    /// From a checkpoint's request to its part written, for the last one, ns (a gauge):
    /// barrier alignment, sink pre-commits and the write.
    pub checkpoint_last_ns: Counter,
    /// Checkpoints the shard heard committed.
    pub checkpoints_committed: Counter,
    /// Checkpoints the shard heard given up.
    pub checkpoints_aborted: Counter,
    /// The id of the last checkpoint committed (or restored at start), a gauge.
    pub checkpoint_last_committed: Counter,
    /// Start-to-end latency of every finished message, ns.
    pub latency: Pow2Histogram,
    sources: Mutex<Vec<Arc<SourceCounters>>>,
    sinks: Mutex<Vec<Arc<SinkCounters>>>,
    operators: Mutex<Vec<Arc<OperatorTimes>>>,
}

/// Finds the set called `name` in `list`, or adds a new one.
fn register<T>(list: &Mutex<Vec<Arc<T>>>, name: &str, make: impl FnOnce() -> T) -> Arc<T>
where
    T: Named,
{
    let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = list.iter().find(|s| s.name() == name) {
        return found.clone();
    }
    let new = Arc::new(make());
    list.push(new.clone());
    new
}

trait Named {
    fn name(&self) -> &str;
}

impl Named for SourceCounters {
    fn name(&self) -> &str {
        &self.name
    }
}
impl Named for SinkCounters {
    fn name(&self) -> &str {
        &self.name
    }
}
impl Named for OperatorTimes {
    fn name(&self) -> &str {
        &self.name
    }
}

impl LiveCounters {
    /// Counters for shard `shard`.
    pub fn new(shard: usize) -> Self {
        LiveCounters {
            shard,
            ..LiveCounters::default()
        }
    }

    /// The counters of the source called `name` (registered on first use).
    pub fn source(&self, name: &str) -> Arc<SourceCounters> {
        register(&self.sources, name, || SourceCounters {
            name: name.to_string(),
            ..SourceCounters::default()
        })
    }

    /// The counters of the sink called `name` (registered on first use).
    pub fn sink(&self, name: &str) -> Arc<SinkCounters> {
        register(&self.sinks, name, || SinkCounters {
            name: name.to_string(),
            ..SinkCounters::default()
        })
    }

    /// The times of the operator called `name` (registered on first use).
    pub fn operator(&self, name: &str) -> Arc<OperatorTimes> {
        register(&self.operators, name, || OperatorTimes {
            name: name.to_string(),
            ..OperatorTimes::default()
        })
    }

    /// Every source registered so far.
    pub fn sources(&self) -> Vec<Arc<SourceCounters>> {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every sink registered so far.
    pub fn sinks(&self) -> Vec<Arc<SinkCounters>> {
        self.sinks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every operator registered so far.
    pub fn operators(&self) -> Vec<Arc<OperatorTimes>> {
        self.operators
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_le_powers_of_two() {
        assert_eq!(Pow2Histogram::bucket(0), 0);
        assert_eq!(Pow2Histogram::bucket(1), 0);
        assert_eq!(Pow2Histogram::bucket(2), 1);
        assert_eq!(Pow2Histogram::bucket(3), 2);
        assert_eq!(Pow2Histogram::bucket(4), 2);
        assert_eq!(Pow2Histogram::bucket(5), 3);
        assert_eq!(Pow2Histogram::bucket(1 << 20), 20);
        assert_eq!(Pow2Histogram::bucket((1 << 20) + 1), 21);
        assert_eq!(Pow2Histogram::bucket(u64::MAX), POW2_BUCKETS - 1);
        for v in 1..5000u64 {
            let k = Pow2Histogram::bucket(v);
            assert!(v <= 1 << k && (k == 0 || v > 1 << (k - 1)), "{v} in {k}");
        }
    }

    #[test]
    fn registers_once_per_name() {
        let l = LiveCounters::new(3);
        let a = l.source("In");
        a.messages_in.inc();
        assert_eq!(l.source("In").messages_in.get(), 1);
        let _ = l.source("Other");
        assert_eq!(l.sources().len(), 2);
        assert_eq!(l.shard, 3);
    }
}
