//! Engine configuration, and the command-line flags every application command shares.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::units::{parse_u64, parse_usize};

/// The largest `max_frame` the engine accepts (64 MiB): a connection may need a buffer this
/// large, and lengths stay far from overflowing.
pub const MAX_FRAME_LIMIT: usize = 64 * 1024 * 1024;

/// The shortest metrics interval (a shorter one floods stderr and starves the shards).
pub const MIN_METRICS_INTERVAL: Duration = Duration::from_millis(1);

/// The longest metrics interval (one day).
pub const MAX_METRICS_INTERVAL: Duration = Duration::from_secs(86_400);

/// The most messages a cross-shard ring may hold (2^24).
pub const MAX_RING_CAPACITY: usize = 1 << 24;

/// The capacity of each cross-shard ring of an exchange when `--ring-capacity` is not given:
/// about 8 MiB of messages (`slot_bytes` each: a lane's data ring holds the messages alone)
/// arriving at each shard from all the others, split among them, as a power of two from 4096
/// to 65536 slots.
///
/// Why: with 4096 slots, Market Spread on 2 shards (perf/peer `bettong-iter`, 16 M messages,
/// 3 runs each, alternating) ran at 13.4 M msgs/s (13.3–13.8) and with 65536 at 20.5 M
/// (19.5–23.0); timely's exchange, which buffers without bound, ran at 25.1 M. On this 2-vCPU
/// machine a shard is descheduled now and then, and a small ring fills meanwhile: the other
/// shard spills into its overflow queue and pauses its sources (700–1700 pauses per run at
/// 4096, about 100 at 65536). With many shards the floor keeps today's 4096 slots per ring.
///
/// Tried after the doorbell fix (`Doorbell::answer`), which removed the 100 ms waits that
/// first made small rings fill: about 1 MiB per shard (8192 slots at 2 shards). Market
/// Spread's `bettong-iter` ran 34.8 / 34.7 / 33.8 M msgs/s against 25.1–28.4 M in one quiet
/// hour, then no different in noisier runs; `bench word-count --shards 2` lost a fifth
/// (373–404 k lines/s against 447–594 k), its lines fanning out into bursts of words. Kept
/// at 8 MiB.
///
/// ```
/// use bettong::runtime::config::auto_ring_capacity;
/// assert_eq!(auto_ring_capacity(80, 2), 65536);
/// assert_eq!(auto_ring_capacity(80, 4), 32768);
/// assert_eq!(auto_ring_capacity(80, 64), 4096);
/// assert_eq!(auto_ring_capacity(1024, 2), 8192);
/// ```
pub fn auto_ring_capacity(slot_bytes: usize, shards: usize) -> usize {
    const INBOUND_BYTES: usize = 8 << 20;
    let per_ring = INBOUND_BYTES / (slot_bytes.max(1) * shards.saturating_sub(1).max(1));
    // The largest power of two not above `per_ring` (rings round up to one).
    per_ring
        .checked_ilog2()
        .map_or(0, |bits| 1 << bits)
        .clamp(4096, 65536)
}

/// The most bytes a shard may buffer per sink (1 GiB).
pub const MAX_SINK_BUFFER: usize = 1 << 30;

/// Core numbers go up to this (the size of the kernel's default CPU set, minus one).
pub const MAX_CORE: usize = 1023;

/// Checks that `value` is within `min..=max`; the error names `flag`.
///
/// ```
/// use bettong::runtime::config::check_range;
/// assert!(check_range("--max-frame", 0, 1, 10).unwrap_err().contains("--max-frame"));
/// assert_eq!(check_range("--max-frame", 5, 1, 10), Ok(5));
/// ```
pub fn check_range(flag: &str, value: usize, min: usize, max: usize) -> Result<usize, String> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{flag} {value} is out of range: it must be between {min} and {max}"
        ))
    }
}

/// Checks a metrics interval: 0 (off), or between 1 ms and one day.
///
/// ```
/// use std::time::Duration;
/// use bettong::runtime::config::check_metrics_interval;
/// assert!(check_metrics_interval(Duration::from_nanos(1)).is_err());
/// assert!(check_metrics_interval(Duration::ZERO).is_ok());
/// ```
pub fn check_metrics_interval(d: Duration) -> Result<Duration, String> {
    if d.is_zero() || (MIN_METRICS_INTERVAL..=MAX_METRICS_INTERVAL).contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "--metrics-interval {d:?} is out of range: use 0 (off) or 1ms to 24h"
        ))
    }
}

/// How an idle shard waits by default: busy for 10 µs after its last work, then asleep.
///
/// Why not `Park`: on this 2-vCPU VM a sleep and its wake-up cost more CPU than 10 µs of
/// spinning (glommio issues a `membarrier` before every sleep, and the IPIs it sends trap to
/// the hypervisor). Open-loop Market Spread through `InProcessSource` on 1 shard (perf/peer
/// `bettong` latency run, `perf sched` for the shard thread's CPU):
/// - 100 k msgs/s: park p50 17.0 µs, p99 0.78 ms, the shard on CPU 5.92 s of 6.0;
///   `spin:10` p50 258 ns, p99 84 µs, 5.94 s of 6.0.
/// - 10 k msgs/s: park p50 53.6 µs, 3.56 s of 6.0; `spin:10` p50 37.2 µs, 4.73 s of 6.0.
/// - idle: both sleep (spinning stops 10 µs after the last work).
///
/// `bench market-spread` blasting over TCP: no difference beyond the noise.
///
/// ```
/// use bettong::runtime::config::{EngineConfig, DEFAULT_POLL};
/// assert_eq!(EngineConfig::default().poll, DEFAULT_POLL);
/// assert_eq!("spin:10".parse(), Ok(DEFAULT_POLL));
/// ```
pub const DEFAULT_POLL: Poll = Poll::SpinFor(Duration::from_micros(10));

/// How an idle shard waits for work.
///
/// ```
/// use bettong::runtime::config::Poll;
/// assert_eq!("spin:50".parse::<Poll>(), Ok(Poll::SpinFor(std::time::Duration::from_micros(50))));
/// // Written as it is parsed (the command lines show the default so).
/// assert_eq!(Poll::SpinFor(std::time::Duration::from_micros(50)).to_string(), "spin:50");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

impl std::fmt::Display for Poll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Poll::Park => f.write_str("park"),
            Poll::Spin => f.write_str("spin"),
            Poll::SpinFor(d) => write!(f, "spin:{}", d.as_micros()),
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
    pub inputs: Vec<(Option<String>, Address)>,
    /// Sink addresses: `(Some(name), addr)`, or `(None, addr)` for a one-sink application.
    pub outputs: Vec<(Option<String>, Address)>,
    /// One shard per listed core.
    pub cores: Vec<usize>,
    /// Pin each shard's thread to its core.
    pub pin: bool,
    /// The largest frame a source accepts, in bytes.
    pub max_frame: usize,
    /// Messages each cross-shard ring holds; `None`: [`auto_ring_capacity`].
    pub ring_capacity: Option<usize>,
    /// Bytes a shard buffers per sink before its sources stop reading.
    pub sink_buffer: usize,
    /// How an idle shard waits.
    pub poll: Poll,
    /// Print live metrics on stderr this often (`None`: only the summary at exit).
    pub metrics_interval: Option<Duration>,
    /// Also append each period's metrics as a JSON line to this file.
    pub metrics_json: Option<PathBuf>,
    /// Serve `GET /metrics` (Prometheus text format) and `GET /health` over HTTP on this
    /// address (port 0: any free port; [`Engine::metrics_addr`](crate::Engine::metrics_addr)
    /// tells which), from a thread of its own.
    pub metrics_addr: Option<SocketAddr>,
    /// The longest a stop may take (`None`: no bound). From the stop request, the engine
    /// reads open connections to their end, drains and flushes; at this deadline it cuts the
    /// connections still open and gives up on sinks that have not acknowledged everything,
    /// counting those outputs as undelivered.
    pub drain_timeout: Option<Duration>,
    /// Where barrier checkpoints are written, and restored from at start (`None`: no
    /// checkpoints).
    pub resilience_dir: Option<PathBuf>,
    /// How often a checkpoint starts when `resilience_dir` is set.
    pub checkpoint_interval: Duration,
}

impl EngineConfig {
    /// Checks every setting, so that a bad one is a clear error at start, never a failure (or
    /// a panic) later. Each message names the command-line flag that sets the field.
    ///
    /// ```
    /// use bettong::runtime::config::EngineConfig;
    /// let mut config = EngineConfig::default();
    /// assert!(config.validate().is_ok());
    /// config.max_frame = 0;
    /// assert!(config.validate().unwrap_err().contains("--max-frame"));
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        check_range("--max-frame", self.max_frame, 1, MAX_FRAME_LIMIT)?;
        if let Some(capacity) = self.ring_capacity {
            check_range("--ring-capacity", capacity, 1, MAX_RING_CAPACITY)?;
        }
        check_range("--sink-buffer", self.sink_buffer, 1, MAX_SINK_BUFFER)?;
        if let Some(d) = self.metrics_interval {
            if d.is_zero() {
                return Err("--metrics-interval 0 means off: leave it at None".to_string());
            }
            check_metrics_interval(d)?;
        }
        check_cores(&self.cores).map_err(|e| format!("--cores: {e}"))?;
        check_inputs(&self.inputs).map_err(|e| format!("--in: {e}"))?;
        if self.checkpoint_interval < Duration::from_millis(1) {
            return Err("--time-between-checkpoints must be at least 1ms".to_string());
        }
        // A two-phase-commit sink's transactions are the checkpoints: without them it would
        // keep every output for a commit that never comes.
        if self.resilience_dir.is_none() {
            if let Some((_, a)) = self
                .outputs
                .iter()
                .find(|(_, a)| matches!(a, Address::TwoPhase(_)))
            {
                return Err(format!(
                    "--out {a}: a two-phase-commit sink needs --resilience-dir (its transactions are the checkpoints)"
                ));
            }
        }
        Ok(())
    }
}

/// A core list must name at least one core, each once, none above [`MAX_CORE`].
fn check_cores(cores: &[usize]) -> Result<(), String> {
    if cores.is_empty() {
        return Err("empty core list".to_string());
    }
    if let Some(c) = cores.iter().find(|c| **c > MAX_CORE) {
        return Err(format!(
            "core {c} is above the highest core number {MAX_CORE}"
        ));
    }
    let mut seen = cores.to_vec();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != cores.len() {
        return Err("the core list names a core twice".to_string());
    }
    Ok(())
}

/// Each source once, each fixed address (port not 0) for one source only, and at most one
/// address without a name.
/// Where a source reads or a sink writes: a TCP address (`HOST:PORT`), a file (`file:PATH`,
/// for replays and back-tests), a Wallaroo connector-protocol source
/// (`HOST:PORT:COOKIE:MAX_CREDITS:REFILL_CREDITS`, as Wallaroo spells it) or a two-phase-commit
/// connector sink (`2pc:HOST:PORT`).
///
/// ```
/// use bettong::runtime::config::Address;
/// assert_eq!("file:/tmp/orders.msg".parse::<Address>(), Ok(Address::File("/tmp/orders.msg".into())));
/// assert_eq!("127.0.0.1:7000".parse::<Address>().unwrap().to_string(), "127.0.0.1:7000");
/// let c = "127.0.0.1:7100:Dragons-Love-Tacos:500:50".parse::<Address>().unwrap();
/// assert!(matches!(c, Address::Connector(ref c) if c.cookie == "Dragons-Love-Tacos" && c.max_credits == 500));
/// assert_eq!(c.to_string(), "127.0.0.1:7100:Dragons-Love-Tacos:500:50");
/// assert!(matches!("2pc:127.0.0.1:7200".parse::<Address>(), Ok(Address::TwoPhase(_))));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A file.
    File(PathBuf),
    /// A connector-protocol source's listening address, cookie and credits.
    Connector(ConnectorAddress),
    /// A two-phase-commit connector sink's address.
    TwoPhase(SocketAddr),
}

/// Where a connector-protocol source listens, the cookie its connectors must give, and its
/// credits: a connector may send `max_credits` frames before the engine acknowledges, and
/// the engine acknowledges (refilling to `max_credits`) once `refill_credits` or fewer are left.
///
/// ```
/// let c = bettong::runtime::config::parse_connector("127.0.0.1:7100:tacos:500:50").unwrap();
/// assert_eq!((c.max_credits, c.refill_credits), (500, 50));
/// assert!(bettong::runtime::config::parse_connector("127.0.0.1:7100:tacos:50:500").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorAddress {
    /// The address to listen on.
    pub addr: SocketAddr,
    /// The cookie a connector's Hello must carry.
    pub cookie: String,
    /// Credits given at Hello and after every acknowledgement.
    pub max_credits: u32,
    /// The credit level at or under which the engine acknowledges.
    pub refill_credits: u32,
}

impl std::fmt::Display for ConnectorAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.addr, self.cookie, self.max_credits, self.refill_credits
        )
    }
}

/// Parses a connector source's `HOST:PORT:COOKIE:MAX_CREDITS:REFILL_CREDITS`.
pub fn parse_connector(text: &str) -> Result<ConnectorAddress, String> {
    let form = "HOST:PORT:COOKIE:MAX_CREDITS:REFILL_CREDITS";
    let mut parts = text.rsplitn(4, ':');
    let (Some(refill), Some(max), Some(cookie), Some(addr)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("`{text}` is not {form}"));
    };
    let credits = |what: &str, v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("`{text}`: {what} `{v}` is not a number ({form})"))
    };
    let (max_credits, refill_credits) = (
        credits("MAX_CREDITS", max)?,
        credits("REFILL_CREDITS", refill)?,
    );
    if max_credits == 0 || refill_credits >= max_credits {
        return Err(format!(
            "`{text}`: REFILL_CREDITS ({refill_credits}) must be below MAX_CREDITS ({max_credits}), which must be at least 1"
        ));
    }
    if cookie.is_empty() {
        return Err(format!("`{text}`: the cookie is empty ({form})"));
    }
    Ok(ConnectorAddress {
        addr: parse_addr(addr)?,
        cookie: cookie.to_string(),
        max_credits,
        refill_credits,
    })
}

impl std::str::FromStr for Address {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(format!("`{s}`: no path after file:"));
            }
            return Ok(Address::File(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("2pc:") {
            return parse_addr(addr).map(Address::TwoPhase);
        }
        // HOST:PORT has one colon outside brackets; the connector form has four.
        let colons = s.rsplit(']').next().unwrap_or(s).matches(':').count();
        if colons >= 4 {
            return parse_connector(s).map(Address::Connector);
        }
        parse_addr(s).map(Address::Tcp)
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::File(p) => write!(f, "file:{}", p.display()),
            Address::Connector(c) => write!(f, "{c}"),
            Address::TwoPhase(a) => write!(f, "2pc:{a}"),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Self {
        Address::Tcp(a)
    }
}

fn check_inputs(inputs: &[(Option<String>, Address)]) -> Result<(), String> {
    for (i, (name, addr)) in inputs.iter().enumerate() {
        let earlier = &inputs[..i];
        match name {
            Some(n) if earlier.iter().any(|(m, _)| m.as_ref() == Some(n)) => {
                return Err(format!("source {n} is given more than once"));
            }
            None if earlier.iter().any(|(m, _)| m.is_none()) => {
                return Err(
                    "more than one address without a source name: give NAME@HOST:PORT for each"
                        .to_string(),
                );
            }
            _ => {}
        }
        let any_port = matches!(addr, Address::Tcp(a) | Address::TwoPhase(a) if a.port() == 0)
            || matches!(addr, Address::Connector(c) if c.addr.port() == 0);
        if !any_port && earlier.iter().any(|(_, a)| a == addr) {
            return Err(format!("{addr} is given for two sources"));
        }
    }
    Ok(())
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            inputs: Vec::new(),
            outputs: Vec::new(),
            cores: online_cores(),
            pin: true,
            max_frame: 16_384,
            ring_capacity: None,
            sink_buffer: 256 * 1024,
            poll: DEFAULT_POLL,
            metrics_interval: None,
            metrics_json: None,
            metrics_addr: None,
            drain_timeout: Some(Duration::from_secs(5)),
            resilience_dir: None,
            checkpoint_interval: Duration::from_secs(1),
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
                if b > MAX_CORE {
                    return Err(format!(
                        "core range `{part}` goes above the highest core number {MAX_CORE}"
                    ));
                }
                cores.extend(a..=b);
            }
            None => cores.push(parse_usize(part)?),
        }
    }
    if let Some(c) = cores.iter().find(|c| **c > MAX_CORE) {
        return Err(format!(
            "core {c} is not available: core numbers go up to {MAX_CORE} (in `{text}`)"
        ));
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
///
/// A source given twice (by name, or a second unnamed address) and one address given for two
/// sources are errors:
///
/// ```
/// use bettong::runtime::config::parse_inputs;
/// assert!(parse_inputs("A@127.0.0.1:7000,A@127.0.0.1:7001").is_err());
/// assert!(parse_inputs("127.0.0.1:7000,127.0.0.1:7001").is_err());
/// assert!(parse_inputs("A@127.0.0.1:7000,B@127.0.0.1:7000").is_err());
/// assert!(parse_inputs("A@127.0.0.1:0,B@127.0.0.1:0").is_ok());
/// ```
pub fn parse_inputs(text: &str) -> Result<Vec<(Option<String>, Address)>, String> {
    let inputs = text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| match part.rsplit_once('@') {
            Some(("", _)) => Err(format!("`{part}`: the source name before @ is empty")),
            Some((name, addr)) => Ok((Some(name.to_string()), addr.parse()?)),
            None => Ok((None, part.parse()?)),
        })
        .collect::<Result<Vec<_>, String>>()?;
    check_inputs(&inputs)?;
    Ok(inputs)
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
    fn validate_names_the_flag() {
        let ok = EngineConfig {
            cores: vec![0],
            ..EngineConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = |f: fn(&mut EngineConfig), flag: &str| {
            let mut c = ok.clone();
            f(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.contains(flag), "{e} does not name {flag}");
        };
        bad(|c| c.max_frame = 0, "--max-frame");
        bad(|c| c.max_frame = usize::MAX, "--max-frame");
        bad(|c| c.ring_capacity = Some(0), "--ring-capacity");
        bad(|c| c.sink_buffer = usize::MAX, "--sink-buffer");
        bad(
            |c| c.metrics_interval = Some(Duration::from_nanos(1)),
            "--metrics-interval",
        );
        bad(|c| c.cores = vec![1, 1], "--cores");
        bad(
            |c| {
                let a: Address = "127.0.0.1:7000".parse().unwrap();
                c.inputs = vec![(Some("A".into()), a.clone()), (Some("A".into()), a)];
            },
            "--in",
        );
        assert!(parse_cores("0-100000000000").is_err());
        assert!(parse_cores("5000").is_err());
    }

    #[test]
    fn inputs_with_and_without_names() {
        let ins = parse_inputs("127.0.0.1:1").unwrap();
        assert_eq!(ins, vec![(None, "127.0.0.1:1".parse().unwrap())]);
        assert!(parse_inputs("A@nowhere").is_err());
    }
}
