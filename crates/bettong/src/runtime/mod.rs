//! Engine start-up and shutdown: one shard per core, each a glommio executor pinned to it.
//!
//! ```no_run
//! use bettong::{Application, DecodeError, Engine, Pipeline, TcpSink, TcpSource};
//! use bettong::runtime::config::EngineConfig;
//!
//! let app = Application::new(
//!     "echo",
//!     Pipeline::source("In", TcpSource::new(|b: &[u8]| -> Result<Vec<u8>, DecodeError> { Ok(b.to_vec()) }))
//!         .to_sink(TcpSink::new(|b: &Vec<u8>, out: &mut Vec<u8>| bettong::codec::write_frame(out, b))),
//! );
//! let mut config = EngineConfig::default();
//! config.inputs = vec![(None, "127.0.0.1:7000".parse().unwrap())];
//! config.outputs = vec!["127.0.0.1:5555".parse().unwrap()];
//! let engine = Engine::start(app, config).expect("engine starts");
//! println!("listening on {:?}", engine.sources());
//! engine.stop_handle().stop();
//! let summary = engine.join().expect("clean stop");
//! eprintln!("{summary}");
//! ```

pub mod config;
pub mod doorbell;
mod reporter;
pub mod ring;
pub mod router;
#[doc(hidden)]
pub mod shard;

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::metrics::{self, LiveCounters, Progress, Summary};
use crate::net::source::{accept_loop, fd_reserve, Connections};
use crate::pipeline::Application;
use config::{EngineConfig, Poll};
use doorbell::{Doorbell, Waiter};
use reporter::{Reporter, ShardPeriod};
use shard::{RingRegistry, ShardBuilder};

/// Asks a running engine to stop: stop accepting, read every open connection to its end,
/// process everything, flush the sinks. Cheap to clone and usable from any thread (a signal
/// handler thread, the embedding program).
#[derive(Clone)]
pub struct StopHandle(Arc<StopSignal>);

struct StopSignal {
    stopped: AtomicBool,
    shards: Vec<Arc<Waiter>>,
}

impl StopHandle {
    /// Starts a clean stop. Calling it again does nothing more.
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        for w in &self.0.shards {
            w.wake_if_parked();
        }
    }

    /// True once [`stop`](Self::stop) has been called.
    pub fn is_stopping(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    async fn stopped(&self, shard: usize) {
        std::future::poll_fn(|cx| {
            if self.is_stopping() {
                return std::task::Poll::Ready(());
            }
            self.0.shards[shard].park(cx);
            if self.is_stopping() {
                self.0.shards[shard].unpark();
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// Why [`Engine::start`] failed.
///
/// ```
/// use bettong::runtime::StartError;
/// let e = StartError::Config("--max-frame 0 is out of range".into());
/// assert!(e.is_config());
/// let s: String = e.into(); // so `?` works in functions that return `Result<_, String>`
/// assert!(s.contains("--max-frame"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The configuration cannot work: a setting out of range, an address that does not match
    /// the application's sources or is in use. The `bettong` command exits with status 2.
    Config(String),
    /// The system refused what a shard needs (io_uring, locked memory, a thread).
    System(String),
}

impl StartError {
    /// True for a configuration error (a usage error on the command line).
    pub fn is_config(&self) -> bool {
        matches!(self, StartError::Config(_))
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(m) | StartError::System(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StartError {}

impl From<StartError> for String {
    fn from(e: StartError) -> String {
        e.to_string()
    }
}

/// A running engine.
pub struct Engine {
    shards: Vec<glommio::ExecutorJoinHandle<Summary>>,
    stop: StopHandle,
    sources: Vec<(String, SocketAddr)>,
    cores: Vec<usize>,
    live: Vec<Arc<LiveCounters>>,
    reporter: Option<std::thread::JoinHandle<()>>,
}

impl Engine {
    /// Binds every source's listeners, starts one shard per configured core and returns once
    /// every shard is accepting connections. Checks the configuration first
    /// ([`EngineConfig::validate`]).
    pub fn start(app: Application, config: EngineConfig) -> Result<Engine, StartError> {
        use StartError::{Config, System};
        // Calibrate the clock now rather than on a shard's first message.
        let _ = metrics::now_ns();
        config.validate().map_err(Config)?;
        let n = config.cores.len();
        if config.pin {
            let online = config::online_cores();
            if let Some(c) = config.cores.iter().find(|c| !online.contains(c)) {
                return Err(Config(format!(
                    "--cores: core {c} is not available to this process (available: {online:?})"
                )));
            }
        }
        let addrs = resolve_inputs(&app, &config).map_err(Config)?;
        // Every shard gets its own listener on each source's port (SO_REUSEPORT), bound here so
        // that port 0 resolves to one real port that all shards share.
        let mut sources = Vec::new();
        let mut listeners: Vec<Vec<(String, std::net::TcpListener)>> =
            (0..n).map(|_| Vec::new()).collect();
        for (name, addr) in &addrs {
            probe_port(*addr).map_err(|e| {
                Config(format!("--in: source {name}: cannot listen on {addr}: {e}"))
            })?;
            let mut bound = *addr;
            for shard_listeners in listeners.iter_mut() {
                let l = bind_reuseport(bound).map_err(|e| {
                    Config(format!(
                        "--in: source {name}: cannot listen on {bound}: {e}"
                    ))
                })?;
                bound = l.local_addr().map_err(|e| System(e.to_string()))?;
                shard_listeners.push((name.clone(), l));
            }
            sources.push((name.clone(), bound));
        }

        let app = Arc::new(app);
        let bells = (0..n)
            .map(|_| Doorbell::new())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| System(format!("cannot create shard doorbells: {e}")))?;
        let rings = Arc::new(RingRegistry::new(bells.clone()));
        let stop = StopHandle(Arc::new(StopSignal {
            stopped: AtomicBool::new(false),
            shards: bells.iter().map(|b| Waiter::new(Some(b))).collect(),
        }));
        let (started_tx, started_rx) = mpsc::channel::<Result<(), String>>();
        let (live_tx, live_rx) = mpsc::channel::<Arc<LiveCounters>>();
        let (period_tx, period_rx) = mpsc::channel::<ShardPeriod>();
        let reporter = match config.metrics_interval {
            Some(interval) => Some(
                Reporter::new(n, interval, config.metrics_json.as_ref())
                    .map_err(|e| Config(format!("--metrics-json: {e}")))?
                    .spawn(period_rx),
            ),
            None => None,
        };
        let mut shards = Vec::with_capacity(n);
        for (index, shard_listeners) in listeners.into_iter().enumerate() {
            let core = config.cores[index];
            let placement = if config.pin {
                Placement::Fixed(core)
            } else {
                Placement::Unbound
            };
            let mut builder = LocalExecutorBuilder::new(placement)
                .name(&format!("bettong-shard-{index}"))
                // Shards do no file I/O, so they need little of glommio's registered memory,
                // and it counts against the locked-memory limit (often 8 MiB in all).
                .io_memory(256 * 1024);
            match config.poll {
                Poll::Park => {}
                Poll::Spin => builder = builder.spin_before_park(Duration::from_secs(365 * 86_400)),
                Poll::SpinFor(d) => builder = builder.spin_before_park(d),
            }
            let bell = bells[index].clone();
            let plan = ShardPlan {
                index,
                shards: n,
                app: app.clone(),
                config: config.clone(),
                listeners: shard_listeners,
                rings: rings.clone(),
                stop: stop.clone(),
                started: started_tx.clone(),
                live: live_tx.clone(),
                periods: period_tx.clone(),
            };
            let handle = builder
                .spawn(move || async move {
                    glommio::spawn_local(bell.serve()).detach();
                    run_shard(plan).await
                })
                .map_err(|e| System(format!("cannot start shard {index} on core {core}: {e}")))?;
            shards.push(handle);
        }
        drop((started_tx, live_tx, period_tx));
        for _ in 0..n {
            match started_rx.recv() {
                Ok(Ok(())) => {}
                // The only error a shard reports is a mismatch between the application's sinks
                // and --out.
                Ok(Err(e)) => {
                    stop.stop();
                    return Err(Config(format!("--out: {e}")));
                }
                Err(_) => {
                    stop.stop();
                    return Err(System(shard_failure(shards)));
                }
            }
        }
        Ok(Engine {
            shards,
            stop,
            sources,
            cores: config.cores,
            live: live_rx.try_iter().collect(),
            reporter,
        })
    }

    /// Each source's name and the address it listens on (with the real port when 0 was asked).
    pub fn sources(&self) -> &[(String, SocketAddr)] {
        &self.sources
    }

    /// The core each shard runs on, by shard index.
    pub fn cores(&self) -> &[usize] {
        &self.cores
    }

    /// Frames accepted and messages finished so far, summed over shards (read while running).
    pub fn progress(&self) -> Progress {
        metrics::progress(&self.live)
    }

    /// A handle that stops the engine from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Stops the engine cleanly (everything in flight is processed and every sink flushed)
    /// and returns the merged measurements.
    pub fn stop(self) -> Result<Summary, String> {
        self.stop.stop();
        self.join()
    }

    /// Waits for every shard to finish (after a stop) and returns the merged measurements.
    pub fn join(mut self) -> Result<Summary, String> {
        let mut total = Summary::default();
        for (i, h) in std::mem::take(&mut self.shards).into_iter().enumerate() {
            let s = h.join().map_err(|e| format!("shard {i} failed: {e}"))?;
            total.merge(&s);
        }
        if let Some(r) = self.reporter.take() {
            // Ends once every shard has dropped its sender, which joining them guarantees.
            let _ = r.join();
        }
        Ok(total)
    }
}

impl Drop for Engine {
    /// An engine dropped without [`Engine::stop`] or [`Engine::join`] stops cleanly all the
    /// same: in-flight messages are processed and sinks flushed before the drop returns.
    fn drop(&mut self) {
        if self.shards.is_empty() {
            return;
        }
        self.stop.stop();
        for h in std::mem::take(&mut self.shards) {
            let _ = h.join();
        }
        if let Some(r) = self.reporter.take() {
            let _ = r.join();
        }
    }
}

fn resolve_inputs(
    app: &Application,
    config: &EngineConfig,
) -> Result<Vec<(String, SocketAddr)>, String> {
    let all = app.source_names();
    for (i, n) in all.iter().enumerate() {
        if all[..i].contains(n) {
            return Err(format!("the application has two sources named {n}"));
        }
    }
    let names = &app.tcp_source_names()[..];
    if names.is_empty() && config.inputs.is_empty() {
        return Ok(Vec::new());
    }
    if let [(None, addr)] = config.inputs.as_slice() {
        if let [only] = names {
            return Ok(vec![(only.clone(), *addr)]);
        }
    }
    let mut out = Vec::new();
    for name in names {
        let found = config
            .inputs
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name.as_str()));
        match found {
            Some((_, addr)) => out.push((name.clone(), *addr)),
            None => {
                return Err(format!(
                    "no address for source {name}: give --in {} (one NAME@HOST:PORT per source)",
                    names
                        .iter()
                        .map(|n| format!("{n}@HOST:PORT"))
                        .collect::<Vec<_>>()
                        .join(",")
                ))
            }
        }
    }
    if let Some((n, a)) = config
        .inputs
        .iter()
        .find(|(n, _)| n.as_ref().is_none_or(|n| !names.contains(n)))
    {
        return Err(match n {
            Some(n) => format!(
                "--in names a source {n} that the application does not have (it has {})",
                names.join(", ")
            ),
            None => format!(
                "--in {a}: give the source's name (NAME@HOST:PORT), the application has {} sources",
                names.len()
            ),
        });
    }
    Ok(out)
}

/// Why a shard exited during start-up: the error of the first shard whose executor failed
/// (typically io_uring refused), with what to do about it.
///
/// Each shard is joined on a thread of its own, because a shard that did start may wait for
/// one that did not (a keyed stage waits for its rings to close) and never end; this waits for
/// the first failure only, and leaves the others to end with the process.
fn shard_failure(shards: Vec<glommio::ExecutorJoinHandle<Summary>>) -> String {
    let (tx, rx) = mpsc::channel();
    for (i, h) in shards.into_iter().enumerate() {
        let tx = tx.clone();
        let _ = std::thread::Builder::new()
            .name("bettong-join".to_string())
            .spawn(move || {
                if let Err(e) = h.join() {
                    let _ = tx.send((i, e));
                }
            });
    }
    drop(tx);
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok((i, e)) => format!("shard {i} could not start: {}", explain_glommio(&e)),
        Err(_) => "a shard exited during start-up (no error reported)".to_string(),
    }
}

/// A glommio start-up error, with a hint for the usual causes.
fn explain_glommio(e: &glommio::GlommioError<()>) -> String {
    const MEMLOCK: &str = "io_uring needs locked memory: raise the limit (RLIMIT_MEMLOCK), e.g. \
        `ulimit -l unlimited` in the shell, LimitMEMLOCK=infinity in a systemd unit, or \
        --ulimit memlock=-1 for docker";
    const NO_URING: &str = "io_uring is not available: it needs Linux 5.8 or later, and may be \
        disabled by the sysctl kernel.io_uring_disabled or by a seccomp profile (as in default \
        container profiles)";
    let io = match e {
        glommio::GlommioError::ReactorError(glommio::ReactorErrorKind::MemLockLimit(
            have,
            want,
        )) => {
            return format!(
                "the locked-memory limit is {have} bytes and io_uring needs {want}: {MEMLOCK}"
            )
        }
        glommio::GlommioError::IoError(io) => io,
        other => return other.to_string(),
    };
    // glommio passes its memlock check on as an `Other` I/O error: "MemLockLimit(have/want)".
    let text = io.to_string();
    if let Some(rest) = text.strip_prefix("MemLockLimit(") {
        let (have, want) = rest
            .trim_end_matches(')')
            .split_once('/')
            .unwrap_or(("?", "?"));
        return format!(
            "the locked-memory limit is {have} bytes and io_uring needs {want}: {MEMLOCK}"
        );
    }
    match io.raw_os_error() {
        Some(libc::ENOMEM) => format!("{io}: {MEMLOCK}"),
        Some(libc::EPERM | libc::ENOSYS) => format!("{io}: {NO_URING}"),
        Some(libc::EMFILE | libc::ENFILE) => {
            format!("{io}: out of file descriptors, raise the limit with `ulimit -n`")
        }
        _ => text,
    }
}

/// Fails if another socket (another program, or another engine) listens on `addr`.
///
/// The shards' listeners use SO_REUSEPORT so that they can share one port, but SO_REUSEPORT
/// would equally let them share it with any other listener of the same user that sets it, and
/// the kernel would then split connections between two programs. So the port is first bound
/// without SO_REUSEPORT: that fails with EADDRINUSE when anyone listens there. (SO_REUSEADDR is
/// set, as on the real listeners, so connections in TIME_WAIT from an earlier run do not count.)
///
/// A race remains: the probe must be closed before the shards' listeners can bind, and a
/// program that binds the port with SO_REUSEPORT in the microseconds between the two would
/// share it. Port 0 needs no probe: the kernel never picks a port that is in use.
fn probe_port(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    match socket.bind(&addr.into()) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            e.kind(),
            "the address is already in use by another listener",
        )),
        other => other,
    }
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// What a shard needs from start-up, moved onto its thread.
struct ShardPlan {
    index: usize,
    shards: usize,
    app: Arc<Application>,
    config: EngineConfig,
    listeners: Vec<(String, std::net::TcpListener)>,
    rings: Arc<RingRegistry>,
    stop: StopHandle,
    started: mpsc::Sender<Result<(), String>>,
    live: mpsc::Sender<Arc<LiveCounters>>,
    periods: mpsc::Sender<ShardPeriod>,
}

/// Everything one shard does, from building its graph to its final measurements.
async fn run_shard(plan: ShardPlan) -> Summary {
    let ShardPlan {
        index,
        shards,
        app,
        config,
        listeners,
        rings,
        stop,
        started,
        live,
        periods,
    } = plan;
    let mut sb = ShardBuilder::new(
        index,
        shards,
        rings,
        config.ring_capacity,
        config.sink_buffer,
    );
    let _ = live.send(sb.metrics.live.clone());
    app.build(&mut sb);
    if sb.sinks.len() != config.outputs.len() {
        let _ = started.send(Err(format!(
            "the application has {} sink(s) but --out gives {} address(es)",
            sb.sinks.len(),
            config.outputs.len()
        )));
        let _ = periods.send(ShardPeriod::Done(sb.metrics.take_period()));
        return sb.metrics.snapshot();
    }
    let core = sb.core();
    if let Some(interval) = config.metrics_interval {
        glommio::spawn_local(reporter::shard_periods(
            index,
            interval,
            core.metrics.clone(),
            periods.clone(),
        ))
        .detach();
    }
    let relief = sb.relief.clone();

    let sinks: Vec<_> = sb
        .sinks
        .iter()
        .zip(&config.outputs)
        .map(|(buffer, addr)| {
            let task = glommio::spawn_local(buffer.clone().writer(*addr, index, relief.clone()));
            (buffer.clone(), task)
        })
        .collect();

    let mut stages = std::mem::take(&mut sb.stages);
    // Stage ids grow upstream, so closing in descending order closes a stage's inputs before
    // the stage itself.
    stages.sort_by_key(|s| std::cmp::Reverse(s.id));
    let mut running_stages = Vec::new();
    for stage in stages.iter_mut() {
        let movers: Vec<_> = stage.movers.drain(..).map(glommio::spawn_local).collect();
        let drain = stage
            .drain
            .take()
            .map(|d| glommio::spawn_local(d(core.clone())));
        running_stages.push((std::mem::take(&mut stage.closing), movers, drain));
    }

    let conns = Rc::new(Connections::default());
    let local_tasks: Vec<_> = std::mem::take(&mut sb.local_tasks)
        .into_iter()
        .map(|t| glommio::spawn_local(t(core.clone(), conns.clone())))
        .collect();
    let sink_tasks: Vec<_> = std::mem::take(&mut sb.sink_tasks)
        .into_iter()
        .map(|t| {
            let finish = Rc::new(shard::Notify::default());
            (
                finish.clone(),
                glommio::spawn_local(t(core.clone(), conns.clone(), finish)),
            )
        })
        .collect();
    let mut accepts = Vec::new();
    let mut sources = std::mem::take(&mut sb.sources);
    for (name, listener) in listeners {
        let Some(pos) = sources.iter().position(|s| s.name == name) else {
            continue;
        };
        let source = Rc::new(sources.swap_remove(pos));
        let fd = listener.into_raw_fd();
        // SAFETY: into_raw_fd gave up ownership of the open listening socket; the glommio
        // listener takes it over and closes it on drop.
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
        accepts.push(glommio::spawn_local(accept_loop(
            listener,
            fd,
            source,
            core.clone(),
            conns.clone(),
            config.max_frame,
            fd_reserve(shards, config.outputs.len()),
        )));
    }
    let _ = started.send(Ok(()));
    drop(started);

    stop.stopped(index).await;
    conns.stop();
    for a in accepts {
        a.await;
    }
    conns.until_all_closed().await;
    for t in local_tasks {
        t.await;
    }
    core.flush();
    for (closing, movers, drain) in running_stages {
        for c in &closing {
            c.notify();
        }
        for m in movers {
            m.await;
        }
        if let Some(d) = drain {
            d.await;
        }
    }
    for (buffer, task) in sinks {
        buffer.finish();
        task.await;
    }
    for (finish, task) in sink_tasks {
        finish.notify();
        task.await;
    }
    let _ = periods.send(ShardPeriod::Done(core.metrics.take_period()));
    core.metrics.snapshot()
}
