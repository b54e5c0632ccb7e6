//! Engine configuration, and the command-line flags every application command shares.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::units::{parse_u64, parse_usize};

/// How an idle shard waits for work.
///
/// ```
/// use bettong::runtime::config::Poll;
/// assert_eq!("spin:50".parse::<Poll>(), Ok(Poll::SpinFor(std::time::Duration::from_micros(50))));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Sleep in the kernel at once (lowest CPU use; a wake-up costs tens of µs).
    Park,
    /// Busy-poll sockets and rings without ever sleeping (lowest latency; burns its cores).
    Spin,
    /// Busy-poll for this long after the last work, then sleep.
    SpinFor(Duration),
}

impl std::str::FromStr for Poll {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "park" => Ok(Poll::Park),
            "spin" => Ok(Poll::Spin),
            _ => match s.strip_prefix("spin:") {
                Some(us) => Ok(Poll::SpinFor(Duration::from_micros(parse_u64(us)?))),
                None => Err(format!("`{s}`: expected park, spin or spin:MICROS")),
            },
        }
    }
}

/// How the engine runs: where shards live, how they wait, where sources listen and sinks
/// connect. `bettong_apps::cli::EngineArgs` builds one from the command line; embedders fill it in directly.
///
/// ```
/// use bettong::runtime::config::EngineConfig;
/// let mut config = EngineConfig::default();
/// config.cores = vec![0];
/// config.pin = false;
/// config.inputs = vec![(None, "127.0.0.1:0".parse().unwrap())];
/// config.outputs = vec![(None, "127.0.0.1:5555".parse().unwrap())];
/// assert_eq!(config.max_frame, 16_384);
/// ```
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Source addresses: `(Some(name), addr)`, or `(None, addr)` for a one-source application.
    pub inputs: Vec<(Option<String>, SocketAddr)>,
    /// Sink addresses: `(Some(name), addr)`, or `(None, addr)` for a one-sink application.
    pub outputs: Vec<(Option<String>, SocketAddr)>,
    /// One shard per listed core.
    pub cores: Vec<usize>,
    /// Pin each shard's thread to its core.
    pub pin: bool,
    /// The largest frame a source accepts, in bytes.
    pub max_frame: usize,
    /// Messages each cross-shard ring holds.
    pub ring_capacity: usize,
    /// Bytes a shard buffers per sink before its sources stop reading.
    pub sink_buffer: usize,
    /// How an idle shard waits.
    pub poll: Poll,
    /// Print live metrics on stderr this often (`None`: only the summary at exit).
    pub metrics_interval: Option<Duration>,
    /// Also append each period's metrics as a JSON line to this file.
    pub metrics_json: Option<PathBuf>,
    /// The longest a stop may take (`None`: no bound). From the stop request, the engine
    /// reads open connections to their end, drains and flushes; at this deadline it cuts the
    /// connections still open and gives up on sinks that have not acknowledged everything,
    /// counting those outputs as undelivered.
    pub drain_timeout: Option<Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            inputs: Vec::new(),
            outputs: Vec::new(),
            cores: online_cores(),
            pin: true,
            max_frame: 16_384,
            ring_capacity: 4096,
            sink_buffer: 256 * 1024,
            poll: Poll::Park,
            metrics_interval: None,
            metrics_json: None,
            drain_timeout: Some(Duration::from_secs(5)),
        }
    }
}

/// The cores this process may run on, in order.
pub fn online_cores() -> Vec<usize> {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => ids.into_iter().map(|c| c.id).collect(),
        _ => vec![0],
    }
}

/// Parses a core list such as `0-3,6`.
///
/// ```
/// assert_eq!(bettong::runtime::config::parse_cores("0-2,5"), Ok(vec![0, 1, 2, 5]));
/// assert!(bettong::runtime::config::parse_cores("3-1").is_err());
/// ```
pub fn parse_cores(text: &str) -> Result<Vec<usize>, String> {
    let mut cores = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse_usize(a)?, parse_usize(b)?);
                if a > b {
                    return Err(format!("core range `{part}` runs backwards"));
                }
                cores.extend(a..=b);
            }
            None => cores.push(parse_usize(part)?),
        }
    }
    if cores.is_empty() {
        return Err("empty core list".to_string());
    }
    let mut seen = cores.clone();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != cores.len() {
        return Err(format!("core list `{text}` names a core twice"));
    }
    Ok(cores)
}

/// A `--cores` list such as `0-3,6`.
///
/// ```
/// let c: bettong::runtime::config::CoreList = "0-1".parse().unwrap();
/// assert_eq!(c.0, vec![0, 1]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreList(pub Vec<usize>);

impl std::str::FromStr for CoreList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_cores(s).map(CoreList)
    }
}

/// Resolves `HOST:PORT` to one socket address.
///
/// ```
/// assert_eq!(bettong::runtime::config::parse_addr("127.0.0.1:7000").unwrap().port(), 7000);
/// assert!(bettong::runtime::config::parse_addr("no-port").is_err());
/// ```
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("`{text}` is not a HOST:PORT address: {e}"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

/// Parses `--in`: `NAME@HOST:PORT[,NAME@HOST:PORT...]`, where `NAME@` may be left out.
///
/// ```
/// let ins = bettong::runtime::config::parse_inputs("Orders@127.0.0.1:7000,Nbbo@127.0.0.1:7001").unwrap();
/// assert_eq!(ins[1].0.as_deref(), Some("Nbbo"));
/// ```
pub fn parse_inputs(text: &str) -> Result<Vec<(Option<String>, SocketAddr)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| match part.rsplit_once('@') {
            Some((name, addr)) => Ok((Some(name.to_string()), parse_addr(addr)?)),
            None => Ok((None, parse_addr(part)?)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists() {
        assert_eq!(parse_cores("1"), Ok(vec![1]));
        assert_eq!(parse_cores("0,1"), Ok(vec![0, 1]));
        assert!(parse_cores("0,0").is_err());
        assert!(parse_cores("").is_err());
    }

    #[test]
    fn poll_modes() {
        assert_eq!("park".parse::<Poll>(), Ok(Poll::Park));
        assert_eq!("spin".parse::<Poll>(), Ok(Poll::Spin));
        assert!("nap".parse::<Poll>().is_err());
    }

    #[test]
    fn inputs_with_and_without_names() {
        let ins = parse_inputs("127.0.0.1:1").unwrap();
        assert_eq!(ins, vec![(None, "127.0.0.1:1".parse().unwrap())]);
        assert!(parse_inputs("A@nowhere").is_err());
    }
}
