//! `bettong bench APP`: an all-in-one end-to-end run on loopback. It starts the engine, a
//! receiver as its sink and blasting senders as its sources in one process, checks that the
//! output count is exactly what the input implies, and reports input throughput with the
//! engine's own start-to-end latency percentiles.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::apps::word_count;
use crate::metrics::{format_ns, Summary};
use crate::pipeline::Application;
use crate::runtime::config::{online_cores, CoreList, EngineConfig, Poll};
use crate::runtime::Engine;
use crate::tools::receiver::{ReceiveArgs, ReceiveReport, Receiver};
use crate::tools::sender::{self, SendArgs};
use crate::units::{parse_u64, parse_usize};

/// The sample text `bench word-count` sends: the US Bill of Rights, Wallaroo's word-count data.
pub const SAMPLE_TEXT: &str = include_str!("../apps/bill_of_rights.txt");

/// Flags shared by every `bench` command.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Number of shards, on the first N online cores [default: all online cores]
    #[arg(long, value_parser = parse_usize, conflicts_with = "cores")]
    pub shards: Option<usize>,
    /// Cores to run shards on (e.g. 0-1)
    #[arg(long, value_name = "LIST")]
    pub cores: Option<CoreList>,
    /// Do not pin shard threads to their cores
    #[arg(long)]
    pub no_pin: bool,
    /// How an idle shard waits: park, spin or spin:MICROS
    #[arg(long, default_value = "park")]
    pub poll: Poll,
    /// Input messages to blast (not counting priming)
    #[arg(long, default_value = "1000000", value_parser = parse_u64)]
    pub messages: u64,
    /// Also write the report as one JSON object to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl BenchArgs {
    /// Default flags with `messages` inputs (as the tests and examples use them).
    pub fn new(messages: u64) -> BenchArgs {
        BenchArgs {
            shards: None,
            cores: None,
            no_pin: false,
            poll: Poll::Park,
            messages,
            json: None,
        }
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
                .map(|s| (Some(s.to_string()), loopback))
                .collect(),
            outputs: vec![receiver],
            cores,
            pin: !self.no_pin,
            poll: self.poll,
            ..EngineConfig::default()
        })
    }
}

/// What one benchmark run measured.
#[derive(Clone)]
pub struct BenchReport {
    /// The application benchmarked.
    pub app: String,
    /// Shards the engine ran.
    pub shards: usize,
    /// Frames the engine accepted (priming included).
    pub messages_in: u64,
    /// Outputs the engine wrote.
    pub messages_out: u64,
    /// Outputs the input implies.
    pub expected_out: u64,
    /// From the first blasted message until every message was finished and every output
    /// received.
    pub seconds: f64,
    /// Blasted messages per second over `seconds`.
    pub msgs_per_sec: f64,
    /// The engine's measurements.
    pub summary: Summary,
}

impl BenchReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        let s = &self.summary;
        format!(
            concat!(
                "{{\"app\":\"{}\",\"shards\":{},\"messages_in\":{},\"messages_out\":{},",
                "\"expected_out\":{},\"seconds\":{:.6},\"msgs_per_sec\":{:.1},",
                "\"errors\":{},\"latency_ns\":{{\"p50\":{},\"p99\":{},\"p99_9\":{},",
                "\"p99_99\":{},\"max\":{}}}}}"
            ),
            self.app,
            self.shards,
            self.messages_in,
            self.messages_out,
            self.expected_out,
            self.seconds,
            self.msgs_per_sec,
            s.errors(),
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
        writeln!(f, "{} on {} shard(s)", self.app, self.shards)?;
        writeln!(
            f,
            "input:   {} messages in {:.3} s = {:.0} msgs/s",
            self.messages_in, self.seconds, self.msgs_per_sec
        )?;
        writeln!(
            f,
            "output:  {} messages (expected {})",
            self.messages_out, self.expected_out
        )?;
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

/// One stream of input: what the sender sends to which source.
pub(crate) struct Feed {
    pub(crate) source: &'static str,
    pub(crate) file: PathBuf,
    /// `Some(n)`: binary records of n bytes; `None`: text lines.
    pub(crate) record: Option<usize>,
    pub(crate) messages: u64,
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

/// Runs `app` with a receiver as its sink: sends `prime` and waits until the engine has
/// finished it, then blasts `feeds` concurrently and waits until every message is finished and
/// `expected_out` outputs have arrived.
pub(crate) fn run(
    app: Application,
    args: &BenchArgs,
    receive: ReceiveArgs,
    prime: Option<Feed>,
    feeds: Vec<Feed>,
    expected_out: u64,
) -> Result<(BenchReport, ReceiveReport), String> {
    let name = app.name().to_string();
    let sources: Vec<&str> = feeds.iter().chain(&prime).map(|f| f.source).collect();
    let mut sources_unique = sources.clone();
    sources_unique.sort_unstable();
    sources_unique.dedup();
    let receiver = Receiver::bind(&ReceiveArgs {
        expect: (expected_out > 0).then_some(expected_out),
        ..receive
    })?;
    let receiver_stop = receiver.stop_handle();
    let config = args.engine_config(receiver.local_addr(), &sources_unique)?;
    let shards = config.cores.len();
    let receiving = std::thread::spawn(move || receiver.run());
    let engine = Engine::start(app, config)?;
    let addr_of = |source: &str| {
        engine
            .sources()
            .iter()
            .find(|(n, _)| n == source)
            .map(|(_, a)| a.to_string())
            .ok_or_else(|| format!("engine has no source {source}"))
    };

    let mut primed = 0;
    if let Some(p) = &prime {
        sender::run(&send_args(&addr_of(p.source)?, p, false))?;
        primed = p.messages;
        wait_until(|| engine.progress().finished >= primed, "priming")?;
    }
    let total: u64 = primed + feeds.iter().map(|f| f.messages).sum::<u64>();
    let started = Instant::now();
    let senders: Vec<_> = feeds
        .iter()
        .map(|f| {
            let a = send_args(&addr_of(f.source)?, f, true);
            Ok(std::thread::spawn(move || sender::run(&a)))
        })
        .collect::<Result<_, String>>()?;
    for s in senders {
        s.join().map_err(|_| "a sender panicked".to_string())??;
    }
    wait_until(|| engine.progress().finished >= total, "processing")?;
    // Every output is now in a sink buffer; when the count is right, the receiver will get
    // them all, so the clock stops when it has.
    if engine.progress().messages_out == expected_out && expected_out > 0 {
        wait_until(|| receiving.is_finished(), "receiving")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    engine.stop_handle().stop();
    let summary = engine.join()?;
    receiver_stop.stop();
    let received = receiving
        .join()
        .map_err(|_| "the receiver panicked".to_string())??;
    let blasted = total - primed;
    let report = BenchReport {
        app: name,
        shards,
        messages_in: summary.messages_in,
        messages_out: summary.messages_out,
        expected_out,
        seconds,
        msgs_per_sec: blasted as f64 / seconds,
        summary,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json() + "\n")
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if report.messages_out != expected_out {
        return Err(format!(
            "{report}\nOUTPUT MISMATCH: the engine wrote {} outputs, the input implies {expected_out}",
            report.messages_out
        ));
    }
    Ok((report, received))
}

fn send_args(host: &str, feed: &Feed, blast: bool) -> SendArgs {
    let mut a = SendArgs::new(host, feed.messages);
    a.file = vec![feed.file.clone()];
    a.no_write = true;
    a.repeat = true;
    a.blast = blast;
    if !blast {
        // Priming goes in one quick paced batch.
        a.batch_size = feed.messages.max(1) as usize;
        a.interval = 1_000_000;
    }
    if let Some(size) = feed.record {
        a.binary = true;
        a.msg_size = Some(size);
    }
    a
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

/// `bench word-count`: blasts the sample text, one line per message, and prints the final
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
    };
    let (report, _) = run(
        word_count::application(),
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
/// primes the initial NBBO and waits until it is applied, then blasts orders and NBBO updates
/// (half of `--messages` each) on two connections, and checks the OrderResult count.
pub fn market_spread(args: &BenchArgs) -> Result<BenchReport, String> {
    use crate::apps::market_spread::{NBBO_SOURCE, ORDERS_SOURCE};
    use crate::tools::gen::{self, GenMarketSpreadArgs};
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
    };
    let feeds = vec![
        Feed {
            source: ORDERS_SOURCE,
            file: file(gen::ORDERS_FILE),
            record: Some(57),
            messages: data.orders,
        },
        Feed {
            source: NBBO_SOURCE,
            file: file(gen::NBBO_FILE),
            record: Some(46),
            messages: data.nbbo,
        },
    ];
    let (report, _) = run(
        crate::apps::market_spread::application(),
        args,
        receive,
        Some(prime),
        feeds,
        data.expected_out,
    )?;
    Ok(report)
}
