//! The engine flags every application command shares (`--in`, `--out`, `--cores`, …), parsed by
//! clap into an [`EngineConfig`]. They live here, not in the engine, so that embedders do not
//! compile a command-line parser.

use std::path::PathBuf;
use std::time::Duration;

use bettong::runtime::config::{online_cores, parse_inputs, CoreList, EngineConfig, Poll};
use bettong::units::{parse_duration, parse_usize};

/// The engine flags that every application command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Sources: NAME@HOST:PORT[,NAME@HOST:PORT...] (NAME@ may be left out for a one-source app)
    #[arg(long = "in", short = 'i', value_name = "NAME@HOST:PORT,...")]
    pub inputs: String,
    /// Sinks: NAME@HOST:PORT[,NAME@HOST:PORT...] (NAME@ may be left out for a one-sink app)
    #[arg(long = "out", short = 'o', value_name = "NAME@HOST:PORT,...")]
    pub out: String,
    /// Cores to run shards on, one shard per core (e.g. 0-3,6) [default: all online cores]
    #[arg(long, value_name = "LIST")]
    pub cores: Option<CoreList>,
    /// Do not pin shard threads to their cores
    #[arg(long)]
    pub no_pin: bool,
    /// Largest frame a source accepts, in bytes
    #[arg(long, default_value = "16384", value_parser = parse_usize)]
    pub max_frame: usize,
    /// Messages each cross-shard ring holds
    #[arg(long, default_value = "4096", value_parser = parse_usize)]
    pub ring_capacity: usize,
    /// Bytes each shard buffers per sink before its sources stop reading
    #[arg(long, default_value = "262144", value_parser = parse_usize)]
    pub sink_buffer: usize,
    /// How an idle shard waits: park, spin, or spin:MICROS (spin that long, then park)
    #[arg(long, default_value = "park")]
    pub poll: Poll,
    /// Print msgs/s and start-to-end latency on stderr this often (e.g. 2s, 500ms; 0 = off)
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub metrics_interval: Duration,
    /// Append each interval's metrics (with per-computation and power-of-two latency bins) as
    /// JSON lines to FILE
    #[arg(long, value_name = "FILE")]
    pub metrics_json: Option<PathBuf>,
    /// On SIGTERM/SIGINT, read open connections and deliver outputs for at most this long, then
    /// cut what is still open and count outputs not delivered (e.g. 5s, 500ms; 0 = no bound)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

impl EngineArgs {
    /// The configuration these flags describe.
    pub fn to_config(&self) -> Result<EngineConfig, String> {
        let outputs = parse_inputs(&self.out)?;
        if self.ring_capacity == 0 || self.sink_buffer == 0 {
            return Err("--ring-capacity and --sink-buffer must be above 0".to_string());
        }
        Ok(EngineConfig {
            inputs: parse_inputs(&self.inputs)?,
            outputs,
            cores: self.cores.clone().map_or_else(online_cores, |c| c.0),
            pin: !self.no_pin,
            max_frame: self.max_frame,
            ring_capacity: self.ring_capacity,
            sink_buffer: self.sink_buffer,
            poll: self.poll,
            metrics_interval: (!self.metrics_interval.is_zero()).then_some(self.metrics_interval),
            metrics_json: self.metrics_json.clone(),
            drain_timeout: (!self.drain_timeout.is_zero()).then_some(self.drain_timeout),
        })
    }
}
