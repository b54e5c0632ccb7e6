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
    /// The shard has stopped. (Its timer task may never be dropped, so the reporter counts
    /// these instead of waiting for every sender to go away.)
    Done,
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
        let mut pending: Vec<Vec<(usize, Period)>> = Vec::new();
        let mut last_in = 0;
        let mut last_out = 0;
        let mut done = 0;
        for msg in rx {
            let (shard, seq, period) = match msg {
                ShardPeriod::Period { shard, seq, period } => (shard, seq, period),
                ShardPeriod::Done => {
                    done += 1;
                    if done == self.shards {
                        return;
                    }
                    continue;
                }
            };
            let idx = seq as usize;
            if pending.len() <= idx {
                pending.resize_with(idx + 1, Vec::new);
            }
            pending[idx].push((shard, period));
            if pending[idx].len() < self.shards {
                continue;
            }
            let parts = std::mem::take(&mut pending[idx]);
            let mut merged = parts[0].1.clone();
            for (_, part) in &parts[1..] {
                let _ = merged.latency.add(&part.latency);
                merged.messages_in += part.messages_in;
                merged.messages_out += part.messages_out;
            }
            let (din, dout) = (merged.messages_in - last_in, merged.messages_out - last_out);
            (last_in, last_out) = (merged.messages_in, merged.messages_out);
            self.emit(idx as u64 + 1, &merged, din, dout);
            debug_assert!(parts.iter().all(|(shard, _)| *shard < self.shards));
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
                    "\"latency_pow2_bins\":{{{}}}}}\n"
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
                bins.join(",")
            );
            if let Err(e) = f.write_all(line.as_bytes()) {
                eprintln!("bettong: --metrics-json: {e}");
                self.json = None;
            }
        }
    }
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
