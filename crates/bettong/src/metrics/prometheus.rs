//! The Prometheus text exposition format (version 0.0.4), written by hand from the shards'
//! [`LiveCounters`]: counters, gauges and histograms need only `# HELP`/`# TYPE` lines,
//! escaped label values and one sample per line, so no crate (and no registry with its own
//! locks and atomics next to ours) is needed.
//!
//! Every series carries `app` and `shard`; source, sink and operator series carry the name.
//! Latency histograms have Wallaroo's power-of-two bins as buckets: `le` is `2^k` nanoseconds.
//!
//! ```
//! use std::sync::Arc;
//! use bettong::metrics::{prometheus, LiveCounters};
//! let shard = Arc::new(LiveCounters::new(0));
//! let text = prometheus::encode("word count", &[shard]);
//! assert!(text.contains("bettong_messages_out_total{app=\"word count\",shard=\"0\"} 0\n"));
//! ```

use std::fmt::Write;
use std::sync::Arc;

use super::live::{LiveCounters, Pow2Histogram, POW2_BUCKETS};

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value: backslash, double quote and line feed.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A metric family being written: the header once, then samples.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out, name }
    }

    fn sample(&mut self, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{}{{{labels}}} {value}", self.name);
    }

    /// A histogram's `_bucket` (cumulative, `le` = 2^k ns, then `+Inf`), `_sum` and `_count`.
    fn histogram(&mut self, labels: &str, h: &Pow2Histogram) {
        let (buckets, sum) = h.read();
        let mut cumulative = 0u64;
        for (k, n) in buckets.iter().enumerate().take(POW2_BUCKETS) {
            cumulative += n;
            let _ = writeln!(
                self.out,
                "{}_bucket{{{labels},le=\"{}\"}} {cumulative}",
                self.name,
                1u64 << k
            );
        }
        let _ = writeln!(
            self.out,
            "{}_bucket{{{labels},le=\"+Inf\"}} {cumulative}",
            self.name
        );
        let _ = writeln!(self.out, "{}_sum{{{labels}}} {sum}", self.name);
        let _ = writeln!(self.out, "{}_count{{{labels}}} {cumulative}", self.name);
    }
}

/// Every series of every shard, in the text format.
pub fn encode(app: &str, shards: &[Arc<LiveCounters>]) -> String {
    let app = escape(app);
    let mut shards: Vec<&Arc<LiveCounters>> = shards.iter().collect();
    shards.sort_by_key(|s| s.shard);
    let base = |s: &LiveCounters| format!("app=\"{app}\",shard=\"{}\"", s.shard);
    let mut out = String::with_capacity(16 * 1024);

    type ShardValue = fn(&LiveCounters) -> String;
    let per_shard: [(&'static str, &str, &str, ShardValue); 13] = [
        (
            "bettong_messages_out_total",
            "counter",
            "Outputs encoded into sink buffers (all sinks of the shard).",
            |s| s.messages_out.get().to_string(),
        ),
        (
            "bettong_messages_filtered_total",
            "counter",
            "Messages a computation dropped without output.",
            |s| s.filtered.get().to_string(),
        ),
        (
            "bettong_messages_finished_total",
            "counter",
            "Messages finished: output encoded or filtered (the latency histogram's count).",
            |s| s.finished.get().to_string(),
        ),
        (
            "bettong_backpressure_pauses_total",
            "counter",
            "Times a source or exchange drain waited for a full ring or sink buffer.",
            |s| s.pauses.get().to_string(),
        ),
        (
            "bettong_backpressure_paused_seconds_total",
            "counter",
            "Time sources and drains spent waiting for a full ring or sink buffer.",
            |s| format!("{:.9}", s.paused_ns.get() as f64 / 1e9),
        ),
        (
            "bettong_late_messages_total",
            "counter",
            "Messages windows dropped as late (every window they belonged to had fired).",
            |s| s.late.get().to_string(),
        ),
        (
            "bettong_cut_connections_total",
            "counter",
            "Source connections still open at the drain timeout, which the stop cut.",
            |s| s.cut_connections.get().to_string(),
        ),
        (
            "bettong_checkpoint_parts_total",
            "counter",
            "Checkpoints whose part this shard wrote (--resilience-dir).",
            |s| s.checkpoint_parts.get().to_string(),
        ),
        (
            "bettong_checkpoint_bytes_total",
            "counter",
            "Bytes of the checkpoint parts this shard wrote.",
            |s| s.checkpoint_bytes.get().to_string(),
        ),
        (
            "bettong_checkpoint_last_seconds",
            "gauge",
            "The last checkpoint on this shard, from its request to its part written (alignment, sink pre-commits, write).",
            |s| format!("{:.9}", s.checkpoint_last_ns.get() as f64 / 1e9),
        ),
        (
            "bettong_checkpoints_committed_total",
            "counter",
            "Checkpoints committed (manifest written).",
            |s| s.checkpoints_committed.get().to_string(),
        ),
        (
            "bettong_checkpoints_aborted_total",
            "counter",
            "Checkpoints given up (a shard or sink failed or refused, or the engine stopped).",
            |s| s.checkpoints_aborted.get().to_string(),
        ),
        (
            "bettong_checkpoint_last_committed_id",
            "gauge",
            "The id of the last checkpoint committed, or restored at start.",
            |s| s.checkpoint_last_committed.get().to_string(),
        ),
    ];
    for (name, kind, help, value) in per_shard {
        let mut f = Family::new(&mut out, name, kind, help);
        for s in &shards {
            f.sample(&base(s), value(s));
        }
    }

    let sources: Vec<_> = shards
        .iter()
        .map(|s| (base(s), s.sources()))
        .collect::<Vec<_>>();
    type SourceValue = fn(&super::live::SourceCounters) -> u64;
    let per_source: [(&'static str, &str, &str, SourceValue); 7] = [
        (
            "bettong_messages_in_total",
            "counter",
            "Frames (messages) accepted at a source.",
            |c| c.messages_in.get(),
        ),
        (
            "bettong_decode_errors_total",
            "counter",
            "Payloads a source's decoder rejected.",
            |c| c.decode_errors.get(),
        ),
        (
            "bettong_frame_errors_total",
            "counter",
            "Source connections closed for a frame over --max-frame.",
            |c| c.frame_errors.get(),
        ),
        (
            "bettong_truncated_frames_total",
            "counter",
            "Source connections that ended in the middle of a frame.",
            |c| c.truncated.get(),
        ),
        (
            "bettong_connections_accepted_total",
            "counter",
            "Connections a source accepted.",
            |c| c.connections.get(),
        ),
        (
            "bettong_connections_open",
            "gauge",
            "Source connections open now.",
            |c| c.open.get(),
        ),
        (
            "bettong_duplicates_dropped_total",
            "counter",
            "Messages a connector source dropped as replays (message id at or below the last processed).",
            |c| c.duplicates.get(),
        ),
    ];
    for (name, kind, help, value) in per_source {
        let mut f = Family::new(&mut out, name, kind, help);
        for (labels, list) in &sources {
            for c in list {
                f.sample(
                    &format!("{labels},source=\"{}\"", escape(&c.name)),
                    value(c),
                );
            }
        }
    }

    let sinks: Vec<_> = shards.iter().map(|s| (base(s), s.sinks())).collect();
    type SinkValue = fn(&super::live::SinkCounters) -> u64;
    let per_sink: [(&'static str, &str, &str, SinkValue); 6] = [
        (
            "bettong_sink_messages_total",
            "counter",
            "Outputs encoded into a TCP sink's buffer.",
            |c| c.messages.get(),
        ),
        (
            "bettong_sink_undelivered_total",
            "counter",
            "Outputs no sink connection acknowledged before the drain timeout.",
            |c| c.undelivered.get(),
        ),
        (
            "bettong_sink_resent_messages_total",
            "counter",
            "Outputs a sink sent again after reconnecting (duplicates possible, never loss).",
            |c| c.resent_messages.get(),
        ),
        (
            "bettong_sink_resent_bytes_total",
            "counter",
            "Bytes a sink sent again after reconnecting.",
            |c| c.resent_bytes.get(),
        ),
        (
            "bettong_sink_reconnects_total",
            "counter",
            "Sink connections lost and made again.",
            |c| c.reconnects.get(),
        ),
        (
            "bettong_sink_connected",
            "gauge",
            "1 while the shard has a connection to the sink.",
            |c| c.connected.get(),
        ),
    ];
    for (name, kind, help, value) in per_sink {
        let mut f = Family::new(&mut out, name, kind, help);
        for (labels, list) in &sinks {
            for c in list {
                f.sample(&format!("{labels},sink=\"{}\"", escape(&c.name)), value(c));
            }
        }
    }

    let mut f = Family::new(
        &mut out,
        "bettong_start_to_end_latency_nanoseconds",
        "histogram",
        "Time from a frame read at a source to its output encoded into a sink or its filtering (Wallaroo's start-to-end), in ns; buckets le=2^k ns.",
    );
    for s in &shards {
        f.histogram(&base(s), &s.latency);
    }
    let mut f = Family::new(
        &mut out,
        "bettong_operator_latency_nanoseconds",
        "histogram",
        "Time of one computation on one message, in ns (one message in 256 is timed); buckets le=2^k ns.",
    );
    for s in &shards {
        let labels = base(s);
        for op in s.operators() {
            f.histogram(
                &format!("{labels},operator=\"{}\"", escape(&op.name)),
                &op.latency,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let s = Arc::new(LiveCounters::new(1));
        s.latency.record(3);
        s.latency.record(4);
        s.latency.record(1 << 30);
        let text = encode("t", &[s]);
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("{needle} in {text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        let b = "bettong_start_to_end_latency_nanoseconds_bucket{app=\"t\",shard=\"1\",";
        assert_eq!(line(&format!("{b}le=\"2\"}}")), "0");
        assert_eq!(line(&format!("{b}le=\"4\"}}")), "2");
        assert_eq!(line(&format!("{b}le=\"536870912\"}}")), "2");
        assert_eq!(line(&format!("{b}le=\"1073741824\"}}")), "3");
        assert_eq!(line(&format!("{b}le=\"+Inf\"}}")), "3");
        assert_eq!(line("bettong_start_to_end_latency_nanoseconds_count{"), "3");
    }
}
