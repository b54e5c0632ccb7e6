//! The per-message latency record: a plain array of counts laid out exactly as the hdr
//! histogram of the summaries (1 ns to 60 s, 3 significant figures), turned into one when a
//! period ends.
//!
//! Why not record into `hdrhistogram::Histogram` directly: its `saturating_record` costs ~64
//! instructions per message (range checks, total count, min/max, the counter type's generic
//! arithmetic); Market Spread on 1 shard spent 128 of its 603 instructions per message in
//! `ShardMetrics::record` (callgrind, `perf/callgrind.sh`). Finding the index and adding one
//! here is ~10. Every message is still counted (the summary's count is the number of messages
//! finished); the copy into an hdr histogram happens once per reporting period.

use std::cell::Cell;

use hdrhistogram::Histogram;

/// The geometry of `Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3)`: 2048 sub-buckets
/// (2 × 10³ rounded up to a power of two), unit 1 ns, so `leading_zero_count_base` is
/// 64 − 0 − 11.
const SUB_HALF_MAGNITUDE: u32 = 10;
const SUB_HALF: usize = 1 << SUB_HALF_MAGNITUDE;
const SUB_MASK: u64 = (2 * SUB_HALF as u64) - 1;
const LEADING_ZERO_BASE: u32 = 53;

/// The counts index of `v` (hdrhistogram's `index_for`).
#[inline]
fn index_for(v: u64) -> usize {
    let bucket = LEADING_ZERO_BASE - (v | SUB_MASK).leading_zeros();
    let sub = (v >> bucket) as usize;
    ((bucket as usize + 1) << SUB_HALF_MAGNITUDE) + sub - SUB_HALF
}

/// The lowest value that lands on `index` (hdrhistogram's `value_for`).
fn value_for(index: usize) -> u64 {
    let bucket = (index >> SUB_HALF_MAGNITUDE) as i64 - 1;
    let sub = ((index & (SUB_HALF - 1)) + SUB_HALF) as u64;
    if bucket < 0 {
        sub - SUB_HALF as u64
    } else {
        sub << bucket
    }
}

/// Counts of latencies in `[1, max]` ns, only ever touched by their shard.
pub(crate) struct LatencyCounts {
    counts: Box<[Cell<u64>]>,
}

impl LatencyCounts {
    /// Counts for values up to `max` (which must be what the hdr histograms are bounded by).
    pub(crate) fn new(max: u64) -> Self {
        LatencyCounts {
            counts: (0..=index_for(max)).map(|_| Cell::new(0)).collect(),
        }
    }

    /// Counts one value (see `record_n`).
    #[cfg(test)]
    pub(crate) fn record(&self, v: u64) {
        self.record_n(v, 1);
    }

    /// Counts `n` values of `v`, which the caller has clamped to `[1, max]` (the latency
    /// record does, for the live histogram too; clamping here again was two more compares per
    /// output). A value outside would be counted in the wrong bucket (0), or not at all (above
    /// `max`).
    #[inline]
    pub(crate) fn record_n(&self, v: u64, n: u64) {
        if let Some(c) = self.counts.get(index_for(v)) {
            c.set(c.get() + n);
        }
    }

    /// Adds every count into `into` (a histogram with the same bounds) and, with `reset`,
    /// zeroes them.
    pub(crate) fn move_into(&self, into: &mut Histogram<u64>, reset: bool) {
        for (i, c) in self.counts.iter().enumerate() {
            let n = if reset { c.replace(0) } else { c.get() };
            if n != 0 {
                into.saturating_record_n(value_for(i), n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 60_000_000_000;

    /// The counts become exactly the histogram that recording each value into hdrhistogram
    /// gives: same buckets, same percentiles, same count.
    #[test]
    fn same_histogram_as_recording_directly() {
        let mut direct = Histogram::<u64>::new_with_bounds(1, MAX, 3).unwrap();
        let counts = LatencyCounts::new(MAX);
        // Every small value, then a pseudo-random spread over the whole range and the edges.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut values: Vec<u64> = (1..5000).collect();
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(1 + (x >> (x % 40)) % MAX);
        }
        values.extend([1, 2047, 2048, 2049, 4095, 4096, MAX - 1, MAX]);
        for &v in &values {
            direct.saturating_record(v);
            counts.record(v);
        }
        let mut moved = Histogram::<u64>::new_with_bounds(1, MAX, 3).unwrap();
        counts.move_into(&mut moved, true);
        assert_eq!(moved.len(), values.len() as u64);
        assert!(moved == direct, "histograms differ");
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(moved.value_at_quantile(q), direct.value_at_quantile(q));
        }
        // Reset: a second move adds nothing.
        let mut empty = Histogram::<u64>::new_with_bounds(1, MAX, 3).unwrap();
        counts.move_into(&mut empty, false);
        assert_eq!(empty.len(), 0);
    }

    /// The bounds themselves are counted (the caller clamps to them).
    #[test]
    fn values_at_the_bounds_are_counted() {
        let counts = LatencyCounts::new(MAX);
        counts.record(1);
        counts.record(MAX);
        let mut h = Histogram::<u64>::new_with_bounds(1, MAX, 3).unwrap();
        counts.move_into(&mut h, false);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX);
    }
}
