//! Live metrics: every `--metrics-interval`, each shard hands its period's measurements to a
//! reporter thread, which merges them and logs one line (target `bettong::metrics`, only for
//! periods in which something moved) and, with `--metrics-json`, appends one JSON line to a
//! file. With `--metrics-addr`, an HTTP endpoint serves the shards' live counters to
//! Prometheus (see `metrics::exporter`).
//!
//! The shards never block on the reporter: a period is a histogram clone sent over a channel,
//! and the endpoint reads single-writer atomics.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::Error;
use crate::metrics::exporter::{Exported, Exporter};
use crate::metrics::{format_ns, power_of_two_bins, LiveCounters, Period};
use crate::runtime::config::EngineConfig;
use crate::runtime::StopHandle;

/// The engine's observers: the reporter thread (with `metrics_interval`) and the metrics
/// endpoint (with `metrics_addr`).
pub(crate) struct Reporting {
    thread: Option<std::thread::JoinHandle<()>>,
    exporter: Option<(Exporter, Arc<Exported>)>,
}

impl Reporting {
    /// Starts what `config` asks for: `None` when it asks for neither. A JSON file that cannot
    /// be opened or an endpoint address that cannot be bound is a configuration error naming
    /// its flag.
    pub(crate) fn start(
        app: &str,
        shards: usize,
        config: &EngineConfig,
        periods: Receiver<ShardPeriod>,
        stop: StopHandle,
    ) -> Result<Option<Reporting>, Error> {
        let exporter = match config.metrics_addr {
            Some(addr) => {
                let exported = Arc::new(Exported {
                    app: app.to_string(),
                    shards: Mutex::new(Vec::new()),
                    healthy: Box::new(move || !stop.is_stopping()),
                });
                let e = Exporter::start(addr, exported.clone())
                    .map_err(|e| Error::Config(format!("--metrics-addr {addr}: {e}")))?;
                Some((e, exported))
            }
            None => None,
        };
        let thread = match config.metrics_interval {
            Some(interval) => Some(
                Reporter::new(shards, interval, config.metrics_json.as_ref(), app)
                    .map_err(Error::Config)?
                    .spawn(periods),
            ),
            None => None,
        };
        if thread.is_none() && exporter.is_none() {
            return Ok(None);
        }
        Ok(Some(Reporting { thread, exporter }))
    }

    /// Hands the started shards' counters to the endpoint.
    pub(crate) fn serve(&self, live: &[Arc<LiveCounters>]) {
        if let Some((_, exported)) = &self.exporter {
            *exported.shards.lock().unwrap_or_else(|e| e.into_inner()) = live.to_vec();
        }
    }

    /// The address the metrics endpoint listens on.
    pub(crate) fn metrics_addr(&self) -> Option<SocketAddr> {
        self.exporter.as_ref().map(|(e, _)| e.addr())
    }

    /// Waits for the reporter's last line (it ends once every shard has sent its last
    /// period), then closes the endpoint.
    pub(crate) fn join(self) -> std::thread::Result<()> {
        let r = self.thread.map_or(Ok(()), |t| t.join());
        if let Some((e, _)) = self.exporter {
            e.shutdown();
        }
        r
    }
}

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
    /// The application's name, JSON-escaped.
    app: String,
}

impl Reporter {
    pub(crate) fn new(
        shards: usize,
        interval: Duration,
        json: Option<&PathBuf>,
        app: &str,
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
            app: json_string(app),
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
        // Silent while nothing moves: an idle engine logs nothing every period.
        if din > 0 || dout > 0 || !h.is_empty() {
            tracing::info!(
                target: "bettong::metrics",
                "metrics t={t:.1}s in {:.0}/s out {:.0}/s start-to-end p50 {} p99 {} p99.9 {} max {}",
                din as f64 / secs,
                dout as f64 / secs,
                format_ns(q(0.5)),
                format_ns(q(0.99)),
                format_ns(q(0.999)),
                format_ns(h.max())
            );
        }
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if let Some(f) = self.json.as_mut() {
            let bins: Vec<String> = power_of_two_bins(h)
                .into_iter()
                .map(|(i, n)| format!("\"{i}\":{n}"))
                .collect();
            let line = format!(
                concat!(
                    "{{\"time\":{},\"app\":{},",
                    "\"t_s\":{:.3},\"interval_s\":{:.3},\"messages_in\":{},\"messages_out\":{},",
                    "\"in_per_sec\":{:.1},\"out_per_sec\":{:.1},\"latency_ns\":{{\"p50\":{},",
                    "\"p99\":{},\"p99_9\":{},\"p99_99\":{},\"max\":{},\"samples\":{}}},",
                    "\"latency_pow2_bins\":{{{}}},\"computations\":{{{}}}}}\n"
                ),
                time_ms,
                self.app,
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
                tracing::error!("--metrics-json: {e}; no more JSON lines will be written");
                self.json = None;
            }
        }
    }
}

/// `text` as a JSON string literal, quotes included.
fn json_string(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
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
                "{}:{{\"samples\":{},\"p50_ns\":{},\"p99_ns\":{},\"max_ns\":{},\"pow2_bins\":{{{}}}}}",
                json_string(name),
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
