//! The `bettong` command: the shipped applications, the load tools and the benchmarks.

use std::io::Write;
use std::process::ExitCode;

use bettong::Application;
use bettong_apps::cli::EngineArgs;
use bettong_giles::bench::{self, BenchArgs};
use bettong_giles::gen::{self, GenMarketSpreadArgs};
use bettong_giles::receiver::{self, ReceiveArgs};
use bettong_giles::sender::{self, SendArgs};
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "bettong",
    version,
    about = "A thread-per-core stream-processing engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Word count: framed UTF-8 text in, `word => count` lines out
    WordCount(EngineArgs),
    /// Market Spread: fixish orders (Orders) and NBBO updates (Nbbo) in, OrderResults out
    MarketSpread(EngineArgs),
    /// Passthrough: frames (payloads of at most 64 bytes) in, the same frames out
    Passthrough(EngineArgs),
    /// VWAP: fixish orders (Orders) in, one `SYMBOL,START_MS,END_MS,ORDERS,QTY,VWAP` line per
    /// symbol and window of transact time out
    Vwap(VwapCommand),
    /// Write a data set for an application
    Gen {
        #[command(subcommand)]
        data: GenCommand,
    },
    /// Send framed records to TCP targets, paced or as fast as possible (giles sender)
    Send(SendArgs),
    /// Listen on a TCP port and count, and optionally write, what arrives (giles receiver)
    Receive(ReceiveArgs),
    /// Run an application end to end on loopback (engine, senders, receiver in one process)
    /// and report throughput and latency
    Bench {
        #[command(subcommand)]
        app: BenchCommand,
    },
}

/// `bettong bench vwap`: the bench flags and the window flags.
#[derive(clap::Args)]
struct BenchVwapArgs {
    #[command(flatten)]
    bench: BenchArgs,
    #[command(flatten)]
    windows: bettong_apps::vwap::VwapArgs,
}

/// `bettong vwap`: the engine flags and the window flags.
#[derive(clap::Args)]
struct VwapCommand {
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    windows: bettong_apps::vwap::VwapArgs,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Market Spread on generated data: prime the initial NBBO, blast orders and NBBO updates
    MarketSpread(BenchArgs),
    /// Word count on the Bill of Rights, one line per message
    WordCount(BenchArgs),
    /// Passthrough on 54-byte frames (50-byte payloads): the engine with no work on top
    Passthrough(BenchArgs),
    /// The engine-free baseline: the passthrough run with a plain-threads relay in the
    /// engine's place (no shards; latency figures are 0)
    Relay(BenchArgs),
    /// VWAP on generated orders (`gen vwap`): tumbling 1 s windows unless the window flags
    /// say otherwise
    Vwap(BenchVwapArgs),
}

#[derive(Subcommand)]
enum GenCommand {
    /// Market Spread data: initial NBBO, NBBO updates, orders and the expected output count
    MarketSpread(GenMarketSpreadArgs),
    /// VWAP data: orders whose transact times advance (a share of them late)
    Vwap(bettong_giles::gen_vwap::GenVwapArgs),
}

/// Exit status of a usage error: a bad flag value, as clap's own (`Cli::parse` exits with it).
const USAGE_ERROR: u8 = 2;

/// Why a command failed, and the exit status that says so.
struct Failure {
    status: u8,
    message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure { status: 1, message }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log = init_logging();
    let result = match cli.command {
        Command::WordCount(args) => run_app(bettong_apps::word_count::application(), &args),
        Command::MarketSpread(args) => run_app(bettong_apps::market_spread::application(), &args),
        Command::Passthrough(args) => run_app(bettong_apps::passthrough::application(), &args),
        Command::Vwap(args) => match args.windows.windows() {
            Ok(w) => run_app(bettong_apps::vwap::application(w), &args.engine),
            Err(message) => Err(Failure {
                status: USAGE_ERROR,
                message,
            }),
        },
        Command::Gen {
            data: GenCommand::MarketSpread(args),
        } => gen_market_spread(&args).map_err(Failure::from),
        Command::Gen {
            data: GenCommand::Vwap(args),
        } => bettong_giles::gen_vwap::generate(&args)
            .map(|summary| print_out(&summary))
            .map_err(Failure::from),
        Command::Send(mut args) => {
            args.progress = true;
            send(&args).map_err(Failure::from)
        }
        Command::Receive(args) => receive(&args).map_err(Failure::from),
        Command::Bench { app } => bench(app).map_err(Failure::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { status, message }) => {
            eprintln!("bettong: {message}");
            ExitCode::from(status)
        }
    }
}

/// Logs go to stderr through `tracing`, filtered by `RUST_LOG` (default `info`; e.g.
/// `RUST_LOG=warn`, `RUST_LOG=bettong::metrics=off,info`), by a writer thread so that a shard
/// never waits on stderr. The guard flushes what is queued when `main` returns.
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The writer thread must not take the stop signals: they are blocked in every thread
    // but the engine's signal thread, or one of them would kill the process (the default
    // action) instead of starting a clean stop. A thread inherits the mask of its creator.
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; pthread_sigmask
    // only reads `set` and writes `old`.
    let (writer, guard) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let made = tracing_appender::non_blocking(std::io::stderr());
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        made
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    guard
}

/// Writes a report line to stdout. A closed stdout (`| head`) must not turn a finished run into
/// a panic, so a failed write is ignored: the exit status still tells how the run went.
fn print_out(text: &dyn std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// `bettong gen market-spread`: writes the data files and prints what was written.
fn gen_market_spread(args: &GenMarketSpreadArgs) -> Result<(), String> {
    let summary = gen::generate(args)?;
    print_out(&summary);
    Ok(())
}

/// `bettong send`: sends, then prints the report on stdout.
fn send(args: &SendArgs) -> Result<(), String> {
    let report = sender::run(args)?;
    print_out(&report);
    Ok(())
}

/// `bettong receive`: receives until `--expect` or a signal, then prints the report on stdout,
/// or on stderr when the received data go to stdout, so that the data stay clean.
fn receive(args: &ReceiveArgs) -> Result<(), String> {
    let report = receiver::run(args)?;
    if args.data_to_stdout() {
        eprintln!("{report}");
    } else {
        print_out(&report);
    }
    Ok(())
}

/// Runs an application until SIGINT or SIGTERM, then stops it cleanly and prints the summary.
fn bench(app: BenchCommand) -> Result<(), String> {
    let (report, json) = match app {
        BenchCommand::MarketSpread(args) => (bench::market_spread(&args)?, args.json),
        BenchCommand::WordCount(args) => (bench::word_count(&args)?, args.json),
        BenchCommand::Passthrough(args) => (bench::passthrough(&args)?, args.json),
        BenchCommand::Relay(args) => (bench::relay(&args)?, args.json),
        BenchCommand::Vwap(args) => (
            bench::vwap(&args.bench, args.windows.windows()?)?,
            args.bench.json,
        ),
    };
    print_out(&report);
    if let Some(path) = json {
        print_out(&format!("report written to {}", path.display()));
    }
    Ok(())
}

/// Runs an application until SIGINT, SIGTERM or SIGHUP (the engine's own `run_until_signal`,
/// as any embedding program would), printing the shard placement and the `ready` line once it
/// runs, and the summary on stderr at the end. A bad flag (found by `to_config`, or by the
/// engine at start: an address in use, sources that do not match) exits with status 2, like
/// clap's own usage errors; outputs that could not be delivered exit with status 1.
fn run_app(app: Application, args: &EngineArgs) -> Result<(), Failure> {
    let usage = |message: String| Failure {
        status: USAGE_ERROR,
        message,
    };
    let config = args.to_config().map_err(usage)?;
    let pin = config.pin;
    let summary = bettong::run_until_signal(app, config, |engine| {
        let mut out = std::io::stdout().lock();
        for (shard, core) in engine.cores().iter().enumerate() {
            if pin {
                let _ = writeln!(out, "shard {shard} core {core}");
            } else {
                let _ = writeln!(out, "shard {shard} unpinned");
            }
        }
        let mut listening: Vec<String> = engine
            .sources()
            .iter()
            .map(|(name, addr)| format!("{name}@{addr}"))
            .collect();
        if let Some(addr) = engine.metrics_addr() {
            listening.push(format!("metrics@{addr}"));
        }
        let _ = writeln!(out, "ready {}", listening.join(" "));
        let _ = out.flush();
    })
    .map_err(|e| {
        if e.is_usage() {
            usage(e.to_string())
        } else {
            Failure::from(e.to_string())
        }
    })?;
    eprintln!("{summary}");
    if summary.undelivered > 0 {
        return Err(Failure::from(format!(
            "{} output(s) could not be delivered: no sink acknowledged them within the drain timeout",
            summary.undelivered
        )));
    }
    Ok(())
}
