//! The `bettong` command: the shipped applications, the load tools and the benchmarks.

use std::io::Write;
use std::process::ExitCode;

use bettong::runtime::config::EngineArgs;
use bettong::{Application, Engine, StopHandle};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::WordCount(args) => run_app(bettong::apps::word_count::application(), &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bettong: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an application until SIGINT or SIGTERM, then stops it cleanly and prints the summary.
fn run_app(app: Application, args: &EngineArgs) -> Result<(), String> {
    let config = args.to_config()?;
    let signals = Signals::block()?;
    let pin = config.pin;
    let engine = Engine::start(app, config)?;
    signals.forward_to(engine.stop_handle());
    let mut out = std::io::stdout().lock();
    for (shard, core) in engine.cores().iter().enumerate() {
        if pin {
            let _ = writeln!(out, "shard {shard} core {core}");
        } else {
            let _ = writeln!(out, "shard {shard} unpinned");
        }
    }
    let listening: Vec<String> = engine
        .sources()
        .iter()
        .map(|(name, addr)| format!("{name}@{addr}"))
        .collect();
    let _ = writeln!(out, "ready {}", listening.join(" "));
    let _ = out.flush();
    drop(out);
    let summary = engine.join()?;
    eprintln!("{summary}");
    Ok(())
}

/// SIGINT and SIGTERM, taken by one thread with `sigwait` so that shards never see them.
struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    /// Blocks the signals in this thread, so every thread started after it (the shards)
    /// inherits the mask.
    fn block() -> Result<Signals, String> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use, and
        // pthread_sigmask only reads it and changes this thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err("cannot block SIGINT/SIGTERM".to_string());
            }
            Ok(Signals { set })
        }
    }

    /// The first signal stops the engine cleanly; a second one exits at once.
    fn forward_to(self, stop: StopHandle) {
        let set = self.set;
        std::thread::Builder::new()
            .name("bettong-signals".to_string())
            .spawn(move || loop {
                let mut sig = 0;
                // SAFETY: `set` was initialised in `block` and the signals in it are blocked in
                // every thread, so sigwait is the only taker; it writes only to `sig`.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if stop.is_stopping() {
                    eprintln!("bettong: second signal, exiting without draining");
                    std::process::exit(130);
                }
                eprintln!("bettong: signal {sig}, stopping: draining connections and sinks");
                stop.stop();
            })
            .expect("spawn signal thread");
    }
}
