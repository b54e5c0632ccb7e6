//! Running an engine until SIGINT, SIGTERM or SIGHUP: what the `bettong` command does, for any program
//! that embeds the engine. Nothing here is installed unless the program calls
//! [`run_until_signal`]: the engine crate sets no process-wide signal handlers of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::Error;
use crate::metrics::Summary;
use crate::pipeline::Application;
use crate::runtime::config::EngineConfig;
use crate::runtime::Engine;

/// Starts `app`, calls `on_ready` once every shard runs (print the listening addresses, start
/// a load, …), and runs until SIGINT, SIGTERM or SIGHUP; then stops cleanly (stop accepting, read every
/// open connection to its end, process everything, flush the sinks) and returns the summary.
/// A second signal during the stop exits the process at once with status 130.
///
/// The signals are taken by one thread with `sigwait`: they are blocked in the calling thread
/// before the shards start (so no shard sees them) and the mask is restored afterwards.
///
/// ```no_run
/// use bettong::{Application, DecodeError, EngineConfig, Pipeline, TcpSink, TcpSource};
/// let app = Application::new(
///     "echo",
///     Pipeline::source("In", TcpSource::new(|b: &[u8]| -> Result<Vec<u8>, DecodeError> { Ok(b.to_vec()) }))
///         .to_sink("Out", TcpSink::new(|b: &Vec<u8>, out: &mut Vec<u8>| bettong::codec::write_frame(out, b))),
/// );
/// let mut config = EngineConfig::default();
/// config.inputs = vec![(None, "127.0.0.1:7000".parse().unwrap())];
/// config.outputs = vec![(None, "127.0.0.1:5555".parse().unwrap())];
/// let summary = bettong::run_until_signal(app, config, |engine| {
///     println!("ready {:?}", engine.sources());
/// })?;
/// eprintln!("{summary}");
/// # Ok::<(), bettong::Error>(())
/// ```
pub fn run_until_signal(
    app: Application,
    config: EngineConfig,
    on_ready: impl FnOnce(&Engine),
) -> Result<Summary, Error> {
    let mask = SignalMask::block()?;
    let engine = match Engine::start(app, config) {
        Ok(e) => e,
        Err(e) => {
            mask.restore();
            return Err(e);
        }
    };
    let done = Arc::new(AtomicBool::new(false));
    let waiter = spawn_waiter(mask.set, engine.stop_handle(), done.clone())?;
    on_ready(&engine);
    let result = engine.join();
    // Wake the signal thread so it ends: it sees `done` and returns.
    done.store(true, Ordering::SeqCst);
    {
        use std::os::unix::thread::JoinHandleExt;
        // SAFETY: the thread is alive (it only returns after seeing `done`, which it has not
        // yet been woken to check), so its pthread_t is valid; SIGTERM is blocked in it and
        // taken by its sigwait, so nothing else happens.
        unsafe { libc::pthread_kill(waiter.as_pthread_t(), libc::SIGTERM) };
    }
    let _ = waiter.join();
    mask.restore();
    result
}

/// SIGINT, SIGTERM and SIGHUP blocked in the calling thread, and the mask before.
///
/// SIGHUP (the terminal that started the engine closed, or `kill -HUP`) stops the engine as
/// SIGTERM does: a clean drain. Its default action would kill the process mid-stream and lose
/// what is in flight. Under `nohup` the signal stays ignored (an ignored signal never reaches
/// `sigwait`), so the engine keeps running.
struct SignalMask {
    set: libc::sigset_t,
    old: libc::sigset_t,
}

impl SignalMask {
    fn block() -> Result<SignalMask, Error> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises `set` before any other use,
        // pthread_sigmask reads `set`, writes the previous mask into `old`, and changes only
        // this thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGHUP);
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
                return Err(Error::Io(std::io::Error::last_os_error()));
            }
            Ok(SignalMask { set, old })
        }
    }

    fn restore(&self) {
        // SAFETY: `old` is the mask pthread_sigmask returned in `block`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// The thread that takes the signals: the first stops the engine cleanly, a second one exits.
fn spawn_waiter(
    set: libc::sigset_t,
    stop: crate::StopHandle,
    done: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name("bettong-signals".to_string())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: `set` was initialised in `SignalMask::block` and its signals are blocked
            // in this thread (inherited), so sigwait takes them; it writes only to `sig`.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            if done.load(Ordering::SeqCst) {
                return;
            }
            if stop.is_stopping() {
                eprintln!("bettong: second signal, exiting without draining");
                std::process::exit(130);
            }
            tracing::info!("signal {sig}, stopping: draining connections and sinks");
            stop.stop();
        })
        .map_err(Error::Io)
}
