//! Live metrics: every `--metrics-interval`, each shard hands its period's measurements to a
//! reporter thread, which merges them and prints one line on stderr (and, with
//! `--metrics-json`, appends one JSON line to a file).
//!
//! The shards never block on the reporter: a period is a histogram clone sent over a channel.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use crate::metrics::{format_ns, power_of_two_bins, Period};

/// A period's measurements from one shard.
pub(crate) enum ShardPeriod {
    /// A period's measurements.
    Period {
        shard: usize,
        seq: u64,
        period: Period,
    },
    /// The shard has stopped, with its last, partial period. (Its timer task may never be
    /// dropped, so the reporter counts these instead of waiting for every sender to go away.)
    Done(Period),
}

/// Where merged periods go.
pub(crate) struct Reporter {
    shards: usize,
    interval: Duration,
    json: Option<File>,
}

impl Reporter {
    pub(crate) fn new(
        shards: usize,
        interval: Duration,
        json: Option<&PathBuf>,
    ) -> Result<Reporter, String> {
        let json = match json {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("--metrics-json {}: {e}", p.display()))?,
            ),
            None => None,
        };
        Ok(Reporter {
            shards,
            interval,
            json,
        })
    }

    /// Runs on its own thread until every shard has said it is done.
    pub(crate) fn spawn(mut self, rx: Receiver<ShardPeriod>) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("bettong-metrics".to_string())
            .spawn(move || self.run(rx))
            .expect("spawn the metrics thread")
    }

    fn run(&mut self, rx: Receiver<ShardPeriod>) {
        let mut pending: Vec<Vec<Period>> = Vec::new();
        let mut finals: Vec<Period> = Vec::new();
        let (mut last_in, mut last_out, mut emitted) = (0, 0, 0u64);
        for msg in rx {
            let (seq, period) = match msg {
                ShardPeriod::Period { shard, seq, period } => {
                    debug_assert!(shard < self.shards);
                    (seq, period)
                }
                ShardPeriod::Done(last) => {
                    finals.push(last);
                    if finals.len() < self.shards {
                        continue;
                    }
                    // The stop cut the last period short on every shard: report what is left,
                    // so every message counts in exactly one period.
                    let mut merged = finals.remove(0);
                    for p in &finals {
                        absorb(&mut merged, p, true);
                    }
                    for p in pending.iter().flatten() {
                        absorb(&mut merged, p, false);
                    }
                    let (din, dout) =
                        (merged.messages_in - last_in, merged.messages_out - last_out);
                    if din > 0 || dout > 0 || !merged.latency.is_empty() {
                        self.emit(emitted + 1, &merged, din, dout);
                    }
                    return;
                }
            };
            let idx = seq as usize;
            if pending.len() <= idx {
                pending.resize_with(idx + 1, Vec::new);
            }
            pending[idx].push(period);
            if pending[idx].len() < self.shards {
                continue;
            }
            let parts = std::mem::take(&mut pending[idx]);
            let mut merged = parts[0].clone();
            for part in &parts[1..] {
                absorb(&mut merged, part, true);
            }
            let (din, dout) = (merged.messages_in - last_in, merged.messages_out - last_out);
            (last_in, last_out) = (merged.messages_in, merged.messages_out);
            emitted = idx as u64 + 1;
            self.emit(emitted, &merged, din, dout);
        }
    }

    fn emit(&mut self, seq: u64, p: &Period, din: u64, dout: u64) {
        let secs = self.interval.as_secs_f64();
        let t = secs * seq as f64;
        let h = &p.latency;
        let q = |q: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        eprintln!(
            "metrics t={t:.1}s in {:.0}/s out {:.0}/s start-to-end p50 {} p99 {} p99.9 {} max {}",
            din as f64 / secs,
            dout as f64 / secs,
            format_ns(q(0.5)),
            format_ns(q(0.99)),
            format_ns(q(0.999)),
            format_ns(h.max())
        );
        if let Some(f) = self.json.as_mut() {
            let bins: Vec<String> = power_of_two_bins(h)
                .into_iter()
                .map(|(i, n)| format!("\"{i}\":{n}"))
                .collect();
            let line = format!(
                concat!(
                    "{{\"t_s\":{:.3},\"interval_s\":{:.3},\"messages_in\":{},\"messages_out\":{},",
                    "\"in_per_sec\":{:.1},\"out_per_sec\":{:.1},\"latency_ns\":{{\"p50\":{},",
                    "\"p99\":{},\"p99_9\":{},\"p99_99\":{},\"max\":{},\"samples\":{}}},",
                    "\"latency_pow2_bins\":{{{}}},\"computations\":{{{}}}}}\n"
                ),
                t,
                secs,
                din,
                dout,
                din as f64 / secs,
                dout as f64 / secs,
                q(0.5),
                q(0.99),
                q(0.999),
                q(0.9999),
                h.max(),
                h.len(),
                bins.join(","),
                computations(&p.computations)
            );
            if let Err(e) = f.write_all(line.as_bytes()) {
                eprintln!("bettong: --metrics-json: {e}");
                self.json = None;
            }
        }
    }
}

/// Adds a shard's period to a merged one (with its counters when `counts`; they are running
/// totals, so only periods of the same moment may be summed).
fn absorb(into: &mut Period, p: &Period, counts: bool) {
    let _ = into.latency.add(&p.latency);
    if counts {
        into.messages_in += p.messages_in;
        into.messages_out += p.messages_out;
    }
    // Every shard registers the same computations in the same order.
    for ((_, m), (_, h)) in into.computations.iter_mut().zip(&p.computations) {
        let _ = m.add(h);
    }
}

/// Per-computation time histograms as JSON members: `"name":{"samples":…,"p50":…,…}`.
fn computations(list: &[(String, hdrhistogram::Histogram<u64>)]) -> String {
    list.iter()
        .map(|(name, h)| {
            let q = |q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
            let bins: Vec<String> = power_of_two_bins(h)
                .into_iter()
                .map(|(i, n)| format!("\"{i}\":{n}"))
                .collect();
            format!(
                "\"{}\":{{\"samples\":{},\"p50_ns\":{},\"p99_ns\":{},\"max_ns\":{},\"pow2_bins\":{{{}}}}}",
                name.replace('"', "'"),
                h.len(),
                q(0.5),
                q(0.99),
                h.max(),
                bins.join(",")
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The shard side: sends a period every `interval` for as long as the shard runs.
pub(crate) async fn shard_periods(
    shard: usize,
    interval: Duration,
    metrics: std::rc::Rc<crate::metrics::ShardMetrics>,
    tx: Sender<ShardPeriod>,
) {
    let start = std::time::Instant::now();
    let mut seq = 0u64;
    loop {
        // Periods end on multiples of the interval since start, so shards stay aligned even if
        // one of them is late to run its timer.
        let next = interval * (seq as u32 + 1);
        let wait = next.saturating_sub(start.elapsed());
        glommio::timer::sleep(wait).await;
        let period = metrics.take_period();
        if tx.send(ShardPeriod::Period { shard, seq, period }).is_err() {
            return;
        }
        seq += 1;
    }
}
