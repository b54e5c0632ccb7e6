//! The engine flags every application command shares (`--in`, `--out`, `--cores`, …), parsed by
//! clap into an [`EngineConfig`]. They live here, not in the engine, so that embedders do not
//! compile a command-line parser.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bettong::runtime::config::{
    check_metrics_interval, check_range, online_cores, parse_addr, parse_inputs, CoreList,
    EngineConfig, Poll, MAX_FRAME_LIMIT, MAX_RING_CAPACITY, MAX_SINK_BUFFER,
};
use bettong::units::{parse_duration, parse_usize};

// Value parsers: clap reports their errors as usage errors (exit status 2) naming the flag.

fn parse_max_frame(text: &str) -> Result<usize, String> {
    check_range("--max-frame", parse_usize(text)?, 1, MAX_FRAME_LIMIT)
}

/// Parses `--ring-capacity` (1 to [`MAX_RING_CAPACITY`]); `bettong bench` takes it too.
///
/// ```
/// use bettong_apps::cli::parse_ring_capacity;
/// assert_eq!(parse_ring_capacity("4096"), Ok(4096));
/// assert!(parse_ring_capacity("0").unwrap_err().contains("--ring-capacity"));
/// ```
pub fn parse_ring_capacity(text: &str) -> Result<usize, String> {
    check_range("--ring-capacity", parse_usize(text)?, 1, MAX_RING_CAPACITY)
}

fn parse_sink_buffer(text: &str) -> Result<usize, String> {
    check_range("--sink-buffer", parse_usize(text)?, 1, MAX_SINK_BUFFER)
}

fn parse_metrics_interval(text: &str) -> Result<Duration, String> {
    check_metrics_interval(parse_duration(text)?)
}

/// The engine flags that every application command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Sources, comma-separated NAME@ADDRESS: ADDRESS is HOST:PORT, file:PATH or (a Wallaroo
    /// connector-protocol listener) HOST:PORT:COOKIE:MAX_CREDITS:REFILL_CREDITS; NAME@ may be
    /// left out for a one-source app
    #[arg(long = "in", short = 'i', value_name = "NAME@ADDRESS,...")]
    pub inputs: String,
    /// Sinks, comma-separated NAME@ADDRESS: ADDRESS is HOST:PORT, file:PATH or (a
    /// two-phase-commit connector sink) 2pc:HOST:PORT; NAME@ may be left out for a one-sink app
    #[arg(long = "out", short = 'o', value_name = "NAME@ADDRESS,...")]
    pub out: String,
    /// Cores to run shards on, one shard per core (e.g. 0-3,6) [default: all online cores]
    #[arg(long, value_name = "LIST")]
    pub cores: Option<CoreList>,
    /// Do not pin shard threads to their cores
    #[arg(long)]
    pub no_pin: bool,
    /// Largest frame a source accepts, in bytes (1 to 64 MiB)
    #[arg(long, default_value = "16384", value_parser = parse_max_frame)]
    pub max_frame: usize,
    /// Messages each cross-shard ring holds (1 to 2^24) [default: about 8 MiB per shard over
    /// the other shards' rings, 4096 to 65536]
    #[arg(long, value_parser = parse_ring_capacity)]
    pub ring_capacity: Option<usize>,
    /// Bytes each shard buffers per sink before its sources stop reading (1 to 1 GiB)
    #[arg(long, default_value = "262144", value_parser = parse_sink_buffer)]
    pub sink_buffer: usize,
    /// How an idle shard waits: park, spin, or spin:MICROS (spin that long, then park)
    #[arg(long, default_value_t = bettong::runtime::config::DEFAULT_POLL)]
    pub poll: Poll,
    /// Print msgs/s and start-to-end latency on stderr this often (e.g. 2s, 500ms; 1ms to 24h,
    /// or 0 = off)
    #[arg(long, default_value = "2s", value_parser = parse_metrics_interval)]
    pub metrics_interval: Duration,
    /// Append each interval's metrics (with per-computation and power-of-two latency bins) as
    /// JSON lines to FILE
    #[arg(long, value_name = "FILE")]
    pub metrics_json: Option<PathBuf>,
    /// Serve GET /metrics (Prometheus text format) and GET /health over HTTP on HOST:PORT (port
    /// 0: any free port; the ready line says which, as metrics@ADDR)
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// On SIGTERM/SIGINT, read open connections and deliver outputs for at most this long, then
    /// cut what is still open and count outputs not delivered (e.g. 5s, 500ms; 0 = no bound)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Write barrier checkpoints into DIR, and restore the last complete one at start
    #[arg(long, value_name = "DIR")]
    pub resilience_dir: Option<PathBuf>,
    /// Start a checkpoint this often (with --resilience-dir)
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub time_between_checkpoints: Duration,
}

impl EngineArgs {
    /// The configuration these flags describe, checked ([`EngineConfig::validate`]): an error
    /// names the flag, and is a usage error (the `bettong` command exits with status 2).
    pub fn to_config(&self) -> Result<EngineConfig, String> {
        let outputs = parse_inputs(&self.out).map_err(|e| format!("--out: {e}"))?;
        let config = EngineConfig {
            inputs: parse_inputs(&self.inputs).map_err(|e| format!("--in: {e}"))?,
            outputs,
            cores: self.cores.clone().map_or_else(online_cores, |c| c.0),
            pin: !self.no_pin,
            max_frame: self.max_frame,
            ring_capacity: self.ring_capacity,
            sink_buffer: self.sink_buffer,
            poll: self.poll,
            metrics_interval: (!self.metrics_interval.is_zero()).then_some(self.metrics_interval),
            metrics_json: self.metrics_json.clone(),
            metrics_addr: self.metrics_addr,
            drain_timeout: (!self.drain_timeout.is_zero()).then_some(self.drain_timeout),
            resilience_dir: self.resilience_dir.clone(),
            checkpoint_interval: self.time_between_checkpoints,
        };
        config.validate()?;
        Ok(config)
    }
}
