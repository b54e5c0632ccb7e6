//! `bettong bench APP`: an all-in-one end-to-end run on loopback. It starts the engine, a
//! receiver as its sink and senders as its sources in one process, checks that the output count
//! is exactly what the input implies, and reports input throughput with the engine's own
//! start-to-end latency percentiles.
//!
//! Senders blast (send as fast as the sockets take) unless `--rate` asks for a paced run, which
//! is how latency is measured at a known load; see [`pacing`].
//!
//! `bench relay` runs the same sender and receiver code around the engine-free
//! [`crate::relay::Relay`] instead of the engine, and reports the same JSON object:
//! it is the baseline that `bench passthrough` (and the `perf/` harness) is compared with.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::receiver::{ReceiveArgs, ReceiveReport, Receiver};
use crate::relay::Relay;
use crate::sender::{self, SendArgs};
use bettong::metrics::{format_ns, Summary};
use bettong::runtime::config::{online_cores, CoreList, EngineConfig, Poll};
use bettong::units::{parse_u64, parse_usize};
use bettong::Application;
use bettong::Engine;
use bettong_apps::cli::parse_ring_capacity;
use bettong_apps::{passthrough, word_count};

/// The sample text `bench word-count` sends: the US Bill of Rights, Wallaroo's word-count data.
pub const SAMPLE_TEXT: &str = bettong_apps::word_count::BILL_OF_RIGHTS;

/// Flags shared by every `bench` command.
///
/// ```
/// use bettong_giles::bench::BenchArgs;
/// let mut args = BenchArgs::new(100_000);
/// args.shards = Some(1);
/// args.rate = Some(50_000); // paced: 5 messages every 100 µs
/// # let _ = args;
/// ```
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Number of shards, on the first N online cores [default: all online cores]. `bench relay`
    /// has no shards: it takes only 0 or 1 here
    #[arg(long, value_parser = parse_usize, conflicts_with = "cores")]
    pub shards: Option<usize>,
    /// Cores to run shards on (e.g. 0-1)
    #[arg(long, value_name = "LIST")]
    pub cores: Option<CoreList>,
    /// Do not pin shard threads to their cores
    #[arg(long)]
    pub no_pin: bool,
    /// How an idle shard waits: park, spin or spin:MICROS
    #[arg(long, default_value_t = bettong::runtime::config::DEFAULT_POLL)]
    pub poll: Poll,
    /// Input messages to send (not counting priming)
    #[arg(long, default_value = "1000000", value_parser = parse_u64)]
    pub messages: u64,
    /// Paced run: offer this many input messages per second in all, as batches of
    /// max(1, rate/10000) messages every 100 µs, split over the input streams in proportion
    /// to their messages; msgs/s then reports the achieved rate [default: blast]
    #[arg(long, value_name = "MSGS_PER_SEC", value_parser = parse_u64)]
    pub rate: Option<u64>,
    /// Sender connections per input stream, batches going round-robin over them [default: one
    /// per shard for passthrough, 1 otherwise]
    #[arg(long, value_name = "N", value_parser = parse_usize)]
    pub connections: Option<usize>,
    /// Messages each cross-shard ring holds (1 to 2^24) [default: about 8 MiB per shard over
    /// the other shards' rings, 4096 to 65536]
    #[arg(long, value_name = "SLOTS", value_parser = parse_ring_capacity)]
    pub ring_capacity: Option<usize>,
    /// Also write the report as one JSON object to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Serve the engine's Prometheus endpoint on HOST:PORT (port 0: any) during the run
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_socket_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// Scrape that endpoint's /metrics this often during the run, as a Prometheus server
    /// would (to measure what scraping costs; needs --metrics-addr)
    #[arg(long, value_name = "DURATION", value_parser = bettong::units::parse_duration, requires = "metrics_addr")]
    pub scrape_every: Option<Duration>,
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    bettong::runtime::config::parse_addr(text)
}

impl BenchArgs {
    /// Default flags with `messages` inputs (as the tests and examples use them).
    pub fn new(messages: u64) -> BenchArgs {
        BenchArgs {
            shards: None,
            cores: None,
            no_pin: false,
            poll: bettong::runtime::config::DEFAULT_POLL,
            messages,
            rate: None,
            connections: None,
            ring_capacity: None,
            json: None,
            metrics_addr: None,
            scrape_every: None,
        }
    }

    /// The shards the engine will run, as `engine_config` will pick them.
    fn shard_count(&self) -> usize {
        match (&self.cores, self.shards) {
            (Some(c), _) => c.0.len(),
            (None, Some(n)) => n,
            (None, None) => online_cores().len(),
        }
    }

    /// Sender connections per input stream, `default` unless `--connections` says otherwise.
    fn connections_or(&self, default: usize) -> usize {
        self.connections.unwrap_or(default).max(1)
    }

    fn engine_config(
        &self,
        receiver: SocketAddr,
        sources: &[&str],
    ) -> Result<EngineConfig, String> {
        let online = online_cores();
        let cores = match (&self.cores, self.shards) {
            (Some(c), _) => c.0.clone(),
            (None, Some(0)) => return Err("--shards must be at least 1".to_string()),
            (None, Some(n)) if self.no_pin => (0..n).collect(),
            (None, Some(n)) if n <= online.len() => online[..n].to_vec(),
            (None, Some(n)) => {
                return Err(format!(
                    "--shards {n}: only {} cores are online (add --no-pin to oversubscribe)",
                    online.len()
                ))
            }
            (None, None) => online,
        };
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        Ok(EngineConfig {
            inputs: sources
                .iter()
                .map(|s| (Some(s.to_string()), loopback.into()))
                .collect(),
            outputs: vec![(None, receiver.into())],
            cores,
            pin: !self.no_pin,
            poll: self.poll,
            metrics_addr: self.metrics_addr,
            ring_capacity: self.ring_capacity,
            ..EngineConfig::default()
        })
    }
}

/// What one benchmark run measured.
#[derive(Clone)]
pub struct BenchReport {
    /// The application benchmarked ("relay" for the engine-free baseline).
    pub app: String,
    /// Shards the engine ran; 0 for the relay, which has no engine.
    pub shards: usize,
    /// Frames the engine (or the relay) accepted, priming included.
    pub messages_in: u64,
    /// Outputs the engine wrote (frames the relay forwarded).
    pub messages_out: u64,
    /// Outputs the input implies.
    pub expected_out: u64,
    /// From the first sent message until every message was finished and every output
    /// received.
    pub seconds: f64,
    /// Sent messages per second over `seconds`: the achieved rate of a paced run.
    pub msgs_per_sec: f64,
    /// The rate `--rate` offered, for a paced run; `None` for a blast.
    pub offered_rate: Option<u64>,
    /// The engine's measurements. For the relay only the counts are filled in: there is no
    /// per-message clock without the engine, so the latency histogram is empty and every
    /// latency figure reads 0.
    pub summary: Summary,
}

impl BenchReport {
    /// The report as one JSON object, the same for every app (the relay included):
    /// `app`, `shards`, `messages_in`, `messages_out`, `expected_out`, `seconds`,
    /// `msgs_per_sec`, `rate` (offered msgs/s, or null for a blast), `errors`, and
    /// `latency_ns` with `p50`, `p99`, `p99_9`, `p99_99`, `max` (all 0 for the relay).
    ///
    /// ```
    /// use bettong_giles::bench::BenchReport;
    /// let r = BenchReport {
    ///     app: "relay".into(), shards: 0, messages_in: 5, messages_out: 5, expected_out: 5,
    ///     seconds: 0.5, msgs_per_sec: 10.0, offered_rate: None, summary: Default::default(),
    /// };
    /// assert!(r.to_json().contains("\"rate\":null,\"errors\":0,\"pauses\":0,\"latency_ns\":{\"p50\":0,"));
    /// ```
    pub fn to_json(&self) -> String {
        let s = &self.summary;
        let rate = self
            .offered_rate
            .map_or_else(|| "null".to_string(), |r| r.to_string());
        format!(
            concat!(
                "{{\"app\":\"{}\",\"shards\":{},\"messages_in\":{},\"messages_out\":{},",
                "\"expected_out\":{},\"seconds\":{:.6},\"msgs_per_sec\":{:.1},\"rate\":{},",
                "\"errors\":{},\"pauses\":{},\"latency_ns\":{{\"p50\":{},\"p99\":{},\"p99_9\":{},",
                "\"p99_99\":{},\"max\":{}}}}}"
            ),
            self.app,
            self.shards,
            self.messages_in,
            self.messages_out,
            self.expected_out,
            self.seconds,
            self.msgs_per_sec,
            rate,
            s.errors(),
            s.pauses,
            s.latency_at(0.5),
            s.latency_at(0.99),
            s.latency_at(0.999),
            s.latency_at(0.9999),
            s.latency.max()
        )
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.summary;
        if self.shards == 0 {
            writeln!(f, "{} (no engine)", self.app)?;
        } else {
            writeln!(f, "{} on {} shard(s)", self.app, self.shards)?;
        }
        write!(
            f,
            "input:   {} messages in {:.3} s = {:.0} msgs/s",
            self.messages_in, self.seconds, self.msgs_per_sec
        )?;
        match self.offered_rate {
            Some(r) => writeln!(f, " (paced; offered {r} msgs/s)")?,
            None => writeln!(f, " (blast)")?,
        }
        writeln!(
            f,
            "output:  {} messages (expected {})",
            self.messages_out, self.expected_out
        )?;
        if self.shards > 0 {
            writeln!(
                f,
                "backpressure: {} pauses (a source or drain waited for a full ring or sink buffer)",
                s.pauses
            )?;
        }
        if s.latency.is_empty() {
            return write!(f, "latency: not measured (no engine, no per-message clock)");
        }
        write!(
            f,
            "latency (start-to-end, in engine): p50 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
            format_ns(s.latency_at(0.5)),
            format_ns(s.latency_at(0.99)),
            format_ns(s.latency_at(0.999)),
            format_ns(s.latency_at(0.9999)),
            format_ns(s.latency.max())
        )
    }
}

/// How a paced run of `rate` messages per second is sent: `(batch size, interval in ns)`.
///
/// Batches of `max(1, rate / 10_000)` messages, one every `batch × 10⁹ / rate` ns, which is
/// 100 µs whenever the rate is 10 000 msgs/s or more. 100 µs is well below the latencies a
/// paced run looks at (so a batch is a small burst, not a queue of its own making) and still
/// coarse enough that the sender's timer, not its sleeping, sets the pace. The cost: between
/// deadlines this short the sender polls the clock rather than sleeps, so every paced stream
/// keeps a core busy. It yields between looks, so a shard woken on that core runs at once, but
/// on a small machine the senders still take CPU time from the shards: read the results with it
/// in mind.
///
/// ```
/// use bettong_giles::bench::pacing;
/// assert_eq!(pacing(1_000_000), (100, 100_000));
/// assert_eq!(pacing(15_000), (1, 66_666));
/// assert_eq!(pacing(10), (1, 100_000_000));
/// ```
pub fn pacing(rate: u64) -> (usize, u64) {
    let rate = rate.max(1);
    let batch = (rate / 10_000).max(1);
    let interval = (u128::from(batch) * 1_000_000_000 / u128::from(rate)) as u64;
    (batch as usize, interval.max(1))
}

/// One stream of input: what the sender sends to which source.
pub(crate) struct Feed {
    pub(crate) source: &'static str,
    pub(crate) file: PathBuf,
    /// `Some(n)`: binary records of n bytes; `None`: text lines.
    pub(crate) record: Option<usize>,
    pub(crate) messages: u64,
    /// Connections the sender spreads this stream over.
    pub(crate) connections: usize,
}

/// A scratch folder removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Result<TempDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("bettong-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a benchmark runs between its senders and its receiver.
pub(crate) enum Target {
    /// The engine running this application.
    Engine(Application),
    /// The engine-free relay; every feed goes to its one listening address.
    Relay,
}

/// A started [`Target`].
enum Running {
    Engine(Engine),
    Relay(Relay),
}

impl Running {
    fn addr_of(&self, source: &str) -> Result<String, String> {
        match self {
            Running::Engine(engine) => engine
                .sources()
                .iter()
                .find(|(n, _)| n == source)
                .map(|(_, a)| a.to_string())
                .ok_or_else(|| format!("engine has no source {source}")),
            Running::Relay(relay) => Ok(relay.local_addr().to_string()),
        }
    }

    /// Messages finished (output or filtered) and outputs written so far.
    fn progress(&self) -> (u64, u64) {
        match self {
            Running::Engine(engine) => {
                let p = engine.progress();
                (p.finished, p.messages_out)
            }
            Running::Relay(relay) => {
                let n = relay.forwarded();
                (n, n)
            }
        }
    }

    /// Stops cleanly and returns the measurements.
    fn finish(self) -> Result<Summary, String> {
        match self {
            Running::Engine(engine) => {
                engine.stop_handle().stop();
                engine.join().map_err(String::from)
            }
            Running::Relay(relay) => {
                relay.stop();
                let r = relay.join()?;
                // The relay's errors (a connection cut mid-frame, an oversized header, a failed
                // socket) land in the `errors` figure of the report.
                Ok(Summary {
                    messages_in: r.frames_in,
                    messages_out: r.frames_out,
                    connections: r.connections,
                    frame_errors: r.errors,
                    ..Summary::default()
                })
            }
        }
    }
}

/// Runs `target` with a receiver as its sink: sends `prime` and waits until it is finished,
/// then sends `feeds` concurrently (blasting, or paced by `--rate`) and waits until every
/// message is finished and `expected_out` outputs have arrived.
pub(crate) fn run(
    target: Target,
    args: &BenchArgs,
    receive: ReceiveArgs,
    prime: Option<Feed>,
    feeds: Vec<Feed>,
    expected_out: u64,
) -> Result<(BenchReport, ReceiveReport), String> {
    if args.rate == Some(0) {
        return Err("--rate must be at least 1 message per second".to_string());
    }
    if args.connections == Some(0) {
        return Err("--connections must be at least 1".to_string());
    }
    let name = match &target {
        Target::Engine(app) => app.name().to_string(),
        Target::Relay => "relay".to_string(),
    };
    let sources: Vec<&str> = feeds.iter().chain(&prime).map(|f| f.source).collect();
    let mut sources_unique = sources.clone();
    sources_unique.sort_unstable();
    sources_unique.dedup();
    let receiver = Receiver::bind(&ReceiveArgs {
        expect: (expected_out > 0).then_some(expected_out),
        ..receive
    })?;
    let receiver_stop = receiver.stop_handle();
    let receiver_addr = receiver.local_addr();
    let (running, shards) = match target {
        Target::Engine(app) => {
            let config = args.engine_config(receiver_addr, &sources_unique)?;
            let shards = config.cores.len();
            (Running::Engine(Engine::start(app, config)?), shards)
        }
        Target::Relay => {
            if args.shards.is_some_and(|n| n > 1) || args.cores.is_some() {
                return Err(
                    "bench relay has no shards: --shards takes only 0 or 1 and --cores none \
                     (use --connections for more input connections)"
                        .to_string(),
                );
            }
            (Running::Relay(Relay::start(receiver_addr)?), 0)
        }
    };
    let receiving = std::thread::spawn(move || receiver.run());
    let scraper = match (&running, args.scrape_every) {
        (Running::Engine(engine), Some(every)) => {
            engine.metrics_addr().map(|a| Scraper::start(a, every))
        }
        _ => None,
    };
    let measured = measure(
        &running,
        args,
        prime.as_ref(),
        &feeds,
        expected_out,
        &receiving,
    );
    // Stop everything whatever happened, so that an error does not leave threads running.
    if let Some(s) = scraper {
        let (scrapes, failed) = s.stop();
        tracing::info!("scraped /metrics {scrapes} times ({failed} failed)");
    }
    let summary = running.finish();
    receiver_stop.stop();
    let received = receiving
        .join()
        .map_err(|_| "the receiver panicked".to_string())?;
    let (seconds, blasted) = measured?;
    let summary = summary?;
    let received = received?;
    let report = BenchReport {
        app: name,
        shards,
        messages_in: summary.messages_in,
        messages_out: summary.messages_out,
        expected_out,
        seconds,
        msgs_per_sec: blasted as f64 / seconds,
        offered_rate: args.rate,
        summary,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json() + "\n")
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if report.messages_out != expected_out {
        return Err(format!(
            "{report}\nOUTPUT MISMATCH: {} wrote {} outputs, the input implies {expected_out}",
            if shards == 0 {
                "the relay"
            } else {
                "the engine"
            },
            report.messages_out
        ));
    }
    Ok((report, received))
}

/// The measured part of [`run`]: priming, then the timed sending and draining. Returns the
/// seconds from the first timed message until the end, and the messages sent in that time.
fn measure<T>(
    running: &Running,
    args: &BenchArgs,
    prime: Option<&Feed>,
    feeds: &[Feed],
    expected_out: u64,
    receiving: &std::thread::JoinHandle<T>,
) -> Result<(f64, u64), String> {
    let mut primed = 0;
    if let Some(p) = prime {
        sender::run(&send_args(&running.addr_of(p.source)?, p, Sending::Prime))?;
        primed = p.messages;
        wait_until(|| running.progress().0 >= primed, "priming")?;
    }
    let sent: u64 = feeds.iter().map(|f| f.messages).sum();
    let total = primed + sent;
    let senders: Vec<_> = feeds
        .iter()
        .map(|f| {
            let how = match args.rate {
                // Each stream gets its share of the rate, so all end together.
                Some(rate) => Sending::Paced(
                    (u128::from(rate) * u128::from(f.messages) / u128::from(sent.max(1))).max(1)
                        as u64,
                ),
                None => Sending::Blast,
            };
            // Loaded and connected before the clock starts: reading the feed files is not
            // the engine's work (see `sender::prepare`).
            sender::prepare(&send_args(&running.addr_of(f.source)?, f, how))
        })
        .collect::<Result<_, String>>()?;
    let started = Instant::now();
    let senders: Vec<_> = senders
        .into_iter()
        .map(|p| std::thread::spawn(move || p.send()))
        .collect();
    // One line on a terminal: messages finished while the senders run and the engine drains.
    let progress = crate::progress::Progress::on_terminal("bench", Some(total));
    while !senders.iter().all(|s| s.is_finished()) {
        progress.show(running.progress().0);
        std::thread::sleep(Duration::from_millis(5));
    }
    // Join every sender before looking at any result, so none is left running.
    let results: Vec<_> = senders.into_iter().map(|s| s.join()).collect();
    for r in results {
        r.map_err(|_| "a sender panicked".to_string())??;
    }
    wait_until(
        || {
            let done = running.progress().0;
            progress.show(done);
            done >= total
        },
        "processing",
    )?;
    progress.finish();
    // Every output is now in a sink buffer; when the count is right, the receiver will get
    // them all, so the clock stops when it has.
    if running.progress().1 == expected_out && expected_out > 0 {
        wait_until(|| receiving.is_finished(), "receiving")?;
    }
    Ok((started.elapsed().as_secs_f64(), sent))
}

/// How a feed is sent.
#[derive(Clone, Copy)]
enum Sending {
    /// Priming: everything in one quick batch, before the clock starts.
    Prime,
    /// As fast as the sockets take.
    Blast,
    /// Paced at this many messages per second (see [`pacing`]).
    Paced(u64),
}

fn send_args(host: &str, feed: &Feed, how: Sending) -> SendArgs {
    let hosts = vec![host; feed.connections.max(1)].join(",");
    let mut a = SendArgs::new(&hosts, feed.messages);
    a.file = vec![feed.file.clone()];
    a.no_write = true;
    a.repeat = true;
    match how {
        Sending::Prime => {
            a.batch_size = feed.messages.max(1) as usize;
            a.interval = 1_000_000;
        }
        Sending::Blast => a.blast = true,
        Sending::Paced(rate) => (a.batch_size, a.interval) = pacing(rate),
    }
    if let Some(size) = feed.record {
        a.binary = true;
        a.msg_size = Some(size);
    }
    a
}

/// Scrapes `GET /metrics` every `every` on a thread of its own, like a Prometheus server.
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Scraper {
    fn start(addr: SocketAddr, every: Duration) -> Scraper {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                match scrape(addr) {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                next += every;
                while Instant::now() < next && !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5).min(every));
                }
            }
            (ok, failed)
        });
        Scraper { stop, thread }
    }

    /// Scrapes made and failed.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 0))
    }
}

/// One `GET /metrics`: the body's length.
fn scrape(addr: SocketAddr) -> std::io::Result<usize> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    Ok(body.len())
}

/// Polls a counter the engine publishes (this is a tool, not a test: a 1 ms poll is fine).
fn wait_until(done: impl Fn() -> bool, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not finish within 10 minutes"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// `bench word-count`: sends the sample text, one line per message, and prints the final
/// count of the most frequent words.
pub fn word_count(args: &BenchArgs) -> Result<BenchReport, String> {
    let dir = TempDir::new("bench-wc")?;
    let lines: Vec<&str> = SAMPLE_TEXT.lines().filter(|l| !l.is_empty()).collect();
    let text = dir.0.join("text.txt");
    std::fs::write(&text, lines.join("\n")).map_err(|e| e.to_string())?;
    let per_line: Vec<u64> = lines
        .iter()
        .map(|l| word_count::split(l).len() as u64)
        .collect();
    let n = lines.len() as u64;
    let expected: u64 = per_line.iter().sum::<u64>() * (args.messages / n)
        + per_line[..(args.messages % n) as usize].iter().sum::<u64>();
    let out = dir.0.join("counts.txt");
    let mut receive = ReceiveArgs::new("127.0.0.1:0");
    receive.output = Some(out.clone());
    let feed = Feed {
        source: word_count::SOURCE,
        file: text,
        record: None,
        messages: args.messages,
        connections: args.connections_or(1),
    };
    let (report, _) = run(
        Target::Engine(word_count::application()),
        args,
        receive,
        None,
        vec![feed],
        expected,
    )?;
    print_top_words(&out, 10)?;
    Ok(report)
}

/// Prints the words with the highest final counts from `word => count` lines.
fn print_top_words(path: &Path, top: usize) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut finals: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some((w, c)) = line.split_once(" => ") {
            let c: u64 = c.parse().unwrap_or(0);
            let e = finals.entry(w).or_default();
            *e = (*e).max(c);
        }
    }
    let mut v: Vec<_> = finals.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{} distinct words; most frequent:", v.len());
    for (w, c) in v.iter().take(top) {
        let _ = writeln!(o, "  {w} => {c}");
    }
    Ok(())
}

/// `bench market-spread`: generates Wallaroo-like data (350 symbols, 15 of them rejected),
/// primes the initial NBBO and waits until it is applied, then sends orders and NBBO updates
/// (half of `--messages` each) on two connections (or two groups of `--connections`), and
/// checks the OrderResult count.
pub fn market_spread(args: &BenchArgs) -> Result<BenchReport, String> {
    use crate::gen::{self, GenMarketSpreadArgs};
    use bettong_apps::market_spread::{NBBO_SOURCE, ORDERS_SOURCE};
    let dir = TempDir::new("bench-ms")?;
    let mut g = GenMarketSpreadArgs::new(&dir.0);
    g.nbbo = args.messages / 2;
    g.orders = args.messages - g.nbbo;
    let data = gen::generate(&g)?;
    let mut receive = ReceiveArgs::new("127.0.0.1:0");
    receive.framed = true;
    receive.no_write = true;
    let file = |name: &str| dir.0.join(name);
    let prime = Feed {
        source: NBBO_SOURCE,
        file: file(gen::INITIAL_NBBO_FILE),
        record: Some(46),
        messages: data.symbols as u64,
        connections: 1,
    };
    let feeds = vec![
        Feed {
            source: ORDERS_SOURCE,
            file: file(gen::ORDERS_FILE),
            record: Some(57),
            messages: data.orders,
            connections: args.connections_or(1),
        },
        Feed {
            source: NBBO_SOURCE,
            file: file(gen::NBBO_FILE),
            record: Some(46),
            messages: data.nbbo,
            connections: args.connections_or(1),
        },
    ];
    let (report, _) = run(
        Target::Engine(bettong_apps::market_spread::application()),
        args,
        receive,
        Some(prime),
        feeds,
        data.expected_out,
    )?;
    Ok(report)
}

/// Payload bytes of each `bench passthrough` / `bench relay` record.
pub const FRAME_PAYLOAD: usize = 50;

/// Distinct records in the generated file (the sender repeats them).
const FRAME_RECORDS: usize = 4096;

/// Writes [`FRAME_RECORDS`] fixed-size records `[u32 BE 50][50-byte payload]` (54 bytes each)
/// to `path`. Each payload starts with its index and is filled with bytes that vary with it, so
/// a mix-up between records would show in a byte-for-byte comparison.
fn write_frames_file(path: &Path) -> Result<(), String> {
    let mut data = Vec::with_capacity(FRAME_RECORDS * (4 + FRAME_PAYLOAD));
    for i in 0..FRAME_RECORDS as u64 {
        data.extend_from_slice(&(FRAME_PAYLOAD as u32).to_be_bytes());
        data.extend_from_slice(&i.to_be_bytes());
        let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for _ in 8..FRAME_PAYLOAD {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push(x as u8);
        }
    }
    std::fs::write(path, data).map_err(|e| format!("{}: {e}", path.display()))
}

/// The one feed of `bench passthrough` and `bench relay`: `--messages` records of
/// 4 + [`FRAME_PAYLOAD`] bytes, from a file generated into `dir`.
/// `bench vwap`: `--messages` orders from `gen vwap` (350 symbols, 10,000 orders per second of
/// event time, in order) on one connection per shard to the VWAP application with `windows`.
/// The clock stops once every order is folded into its window; the windows still open then
/// fire at the stop, and the output count is checked against the data: one line per symbol
/// and window that holds an order.
pub fn vwap(args: &BenchArgs, windows: bettong_apps::vwap::Windows) -> Result<BenchReport, String> {
    use crate::gen_vwap::{generate, GenVwapArgs};
    use bettong_apps::vwap::{decode, Windows};
    let dir = TempDir::new("bench-vwap")?;
    let mut g = GenVwapArgs::new(&dir.0);
    g.orders = args.messages;
    let data = generate(&g)?;
    // The expected outputs, from the data.
    let bytes = std::fs::read(&data.path).map_err(|e| format!("{}: {e}", data.path.display()))?;
    let mut windows_seen = std::collections::HashSet::new();
    let mut counts: std::collections::HashMap<[u8; 4], u64> = std::collections::HashMap::new();
    for frame in bytes.chunks(57) {
        let o = decode(&frame[4..]).map_err(|e| e.to_string())?;
        match windows {
            Windows::Range { range, slide, .. } => {
                let (range, slide) = (range.as_nanos() as u64, slide.as_nanos() as u64);
                let p = o.event_ns() / slide;
                for k in p.saturating_sub(range / slide - 1)..=p {
                    windows_seen.insert((*o.order().symbol(), k));
                }
            }
            Windows::Count(_) => *counts.entry(*o.order().symbol()).or_default() += 1,
        }
    }
    let expected_out = match windows {
        Windows::Range { .. } => windows_seen.len() as u64,
        Windows::Count(n) => counts.values().map(|c| c.div_ceil(n)).sum(),
    };
    let mut receive = ReceiveArgs::new("127.0.0.1:0");
    receive.no_write = true;
    let feed = Feed {
        source: bettong_apps::market_spread::ORDERS_SOURCE,
        file: data.path.clone(),
        record: Some(57),
        messages: args.messages,
        connections: args.connections_or(1),
    };
    let (report, _) = run(
        Target::Engine(bettong_apps::vwap::application(windows)),
        args,
        receive,
        None,
        vec![feed],
        expected_out,
    )?;
    Ok(report)
}

fn frames_feed(dir: &TempDir, connections: usize, messages: u64) -> Result<Feed, String> {
    let file = dir.0.join("frames.bin");
    write_frames_file(&file)?;
    Ok(Feed {
        source: passthrough::SOURCE,
        file,
        record: Some(4 + FRAME_PAYLOAD),
        messages,
        connections,
    })
}

fn frames_receiver() -> ReceiveArgs {
    let mut receive = ReceiveArgs::new("127.0.0.1:0");
    receive.framed = true;
    receive.no_write = true;
    receive
}

/// `bench passthrough`: sends `--messages` 54-byte frames (50-byte payload) to the passthrough
/// application and checks that as many come out. The sender uses one connection per shard
/// unless `--connections` says otherwise. The kernel spreads connections over the shards'
/// listeners by a hash of their addresses, so with few connections per shard the split can be
/// uneven from run to run; more connections even it out.
pub fn passthrough(args: &BenchArgs) -> Result<BenchReport, String> {
    let dir = TempDir::new("bench-pt")?;
    let connections = args.connections_or(args.shard_count());
    let feed = frames_feed(&dir, connections, args.messages)?;
    let (report, _) = run(
        Target::Engine(passthrough::application()),
        args,
        frames_receiver(),
        None,
        vec![feed],
        args.messages,
    )?;
    Ok(report)
}

/// `bench relay`: the engine-free baseline of `bench passthrough`. The same records, sender
/// and receiver, with a [`Relay`] (plain threads and blocking sockets, one thread and one
/// outgoing connection per input connection) in the engine's place.
///
/// There are no shards: `--shards` takes only 0 or 1 (the report says 0), `--cores` is refused,
/// and `--no-pin` and `--poll` change nothing. The sender uses one connection unless
/// `--connections` says otherwise. The relay has no per-message clock, so the report's latency
/// figures are all 0.
pub fn relay(args: &BenchArgs) -> Result<BenchReport, String> {
    let dir = TempDir::new("bench-relay")?;
    let feed = frames_feed(&dir, args.connections_or(1), args.messages)?;
    let (report, _) = run(
        Target::Relay,
        args,
        frames_receiver(),
        None,
        vec![feed],
        args.messages,
    )?;
    Ok(report)
}
