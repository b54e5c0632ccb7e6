//! Engine start-up and shutdown: one shard per core, each a glommio executor pinned to it.
//!
//! ```no_run
//! use bettong::{Application, DecodeError, Engine, Pipeline, TcpSink, TcpSource};
//! use bettong::runtime::config::EngineConfig;
//!
//! let app = Application::new(
//!     "echo",
//!     Pipeline::source("In", TcpSource::new(|b: &[u8]| -> Result<Vec<u8>, DecodeError> { Ok(b.to_vec()) }))
//!         .to_sink("Out", TcpSink::new(|b: &Vec<u8>, out: &mut Vec<u8>| bettong::codec::write_frame(out, b))),
//! );
//! let mut config = EngineConfig::default();
//! config.inputs = vec![(None, "127.0.0.1:7000".parse().unwrap())];
//! config.outputs = vec![(None, "127.0.0.1:5555".parse().unwrap())];
//! let engine = Engine::start(app, config).expect("engine starts");
//! println!("listening on {:?}", engine.sources());
//! engine.stop_handle().stop();
//! let summary = engine.join().expect("clean stop");
//! eprintln!("{summary}");
//! ```

pub(crate) mod checkpoints;
pub mod config;
#[doc(hidden)]
pub mod doorbell;
pub(crate) mod exchange;
mod executors;
mod failure;
pub(crate) mod idle;
pub(crate) mod lane;
pub(crate) mod membarrier;
mod reporter;
#[doc(hidden)]
pub mod ring;
pub(crate) mod route_cache;
pub mod router;
pub(crate) mod run;
pub(crate) mod shard;
pub(crate) mod split;

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::error::Error;
use crate::metrics::{self, LiveCounters, Progress, Summary};
use crate::pipeline::Application;
use crate::plan::{instantiate, Plan, Role, ShardBuild};
use config::EngineConfig;
use doorbell::{Doorbell, Waiter};
use executors::{Executor, Kind};
use reporter::{Reporting, ShardPeriod};
use shard::{RingRegistry, ShardCore};

/// Asks a running engine to stop: stop accepting, read every open connection to its end,
/// process everything, flush the sinks, all within `EngineConfig::drain_timeout` (what is still
/// open then is cut, and outputs not delivered are counted in `Summary::undelivered`). Cheap to clone and usable from any thread (a signal
/// handler thread, the embedding program).
#[derive(Clone)]
pub struct StopHandle(Arc<StopSignal>);

struct StopSignal {
    stopped: AtomicBool,
    shards: Vec<Arc<Waiter>>,
    /// Source instances (sources × shards) that have not ended by themselves: when the last
    /// one ends (every source was a file read to its end), the engine stops.
    sources_left: std::sync::atomic::AtomicUsize,
}

impl StopHandle {
    /// Starts a clean stop. Calling it again does nothing more.
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        for w in &self.0.shards {
            w.wake_if_parked();
        }
    }

    /// One source instance has ended by itself; the last one stops the engine.
    fn source_ended(&self) {
        if self.0.sources_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.stop();
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

/// A running engine.
pub struct Engine {
    shards: Vec<executors::Outcome>,
    stop: StopHandle,
    sources: Vec<(String, SocketAddr)>,
    endpoints: Vec<(String, String)>,
    cores: Vec<usize>,
    live: Vec<Arc<LiveCounters>>,
    reporter: Option<Reporting>,
    coordinator: Option<std::thread::JoinHandle<()>>,
    /// How long the other shards get to stop once one has failed (`--drain-timeout`, 5 s when
    /// that is unbounded): they may wait for the failed one's messages for ever.
    after_failure: Duration,
}

/// The checkpoint store of an engine with `--resilience-dir`, and the channels between its
/// coordinator and the shards.
struct Resilience {
    store: crate::checkpoint::CheckpointStore,
    requests: Arc<checkpoints::Requests>,
    reports_tx: mpsc::Sender<checkpoints::PartReport>,
    reports_rx: mpsc::Receiver<checkpoints::PartReport>,
}

impl Resilience {
    fn open(
        dir: &std::path::Path,
        _plan: &Plan,
        _shards: usize,
        bells: &[Arc<Doorbell>],
    ) -> Result<Resilience, Error> {
        let store = crate::checkpoint::CheckpointStore::open(dir)
            .map_err(|e| Error::Config(format!("--resilience-dir {}: {e}", dir.display())))?;
        let waiters = bells.iter().map(|b| Waiter::new(Some(b))).collect();
        let (reports_tx, reports_rx) = mpsc::channel();
        Ok(Resilience {
            store,
            requests: Arc::new(checkpoints::Requests::new(waiters)),
            reports_tx,
            reports_rx,
        })
    }

    /// What each of `shards` shards restores from the last complete checkpoint (nothing
    /// without one): its key groups of every state operator, its sources' offsets and its
    /// sinks' positions.
    fn restore(&self, shards: usize) -> Result<Vec<checkpoints::Restored>, Error> {
        use crate::checkpoint::format::Record;
        let mut out: Vec<checkpoints::Restored> = (0..shards)
            .map(|_| checkpoints::Restored::default())
            .collect();
        let checkpoint = match self.store.latest_complete() {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(out),
            Err(e) => return Err(Error::Shard(format!("cannot restore a checkpoint: {e}"))),
        };
        // (The store has logged why newer checkpoints were passed over, if any were.)
        let mut entities = 0;
        for (shard, r) in out.iter_mut().enumerate() {
            for group in checkpoint.groups_for(shard, shards) {
                let g = group.map_err(|e| Error::Shard(format!("restoring: {e}")))?;
                entities += g.entries.len();
                r.states.entry(g.operator).or_default().push(g.entries);
            }
        }
        let positions = checkpoint
            .positions()
            .map_err(|e| Error::Shard(format!("restoring: {e}")))?;
        for p in positions {
            match p {
                Record::SourceOffset(o) => {
                    if let Some(r) = out.get_mut(o.shard as usize) {
                        r.offsets.insert(o.source, o.offset);
                    }
                }
                Record::SinkPosition(p) => {
                    if let Some(r) = out.get_mut(p.shard as usize) {
                        r.positions.insert(p.sink, p.position);
                    }
                }
                Record::SinkFile(f) => {
                    for r in out.iter_mut() {
                        r.files
                            .entry(f.sink.clone())
                            .or_default()
                            .insert(f.file.clone(), f.position);
                    }
                }
                Record::Streams(s) => {
                    for r in out.iter_mut() {
                        let table = r.streams.entry(s.source.clone()).or_default();
                        for &(stream, por) in &s.streams {
                            let e = table.entry(stream).or_insert(por);
                            *e = (*e).max(por);
                        }
                    }
                }
                _ => {}
            }
        }
        for r in out.iter_mut() {
            r.checkpoint = Some(checkpoint.id());
        }
        tracing::info!(
            "restored checkpoint {} ({entities} state entities)",
            checkpoint.id()
        );
        eprintln!(
            "bettong: restored checkpoint {} ({entities} state entities)",
            checkpoint.id()
        );
        Ok(out)
    }
}

/// Per shard: what each source's and sink's `open` prepared for it, by node id.
type Parts = HashMap<usize, Box<dyn Any + Send>>;

impl Engine {
    /// Lowers the application into its plan, opens every source and sink (binding the TCP
    /// listeners), starts one shard per configured core and returns once every shard runs.
    pub fn start(app: Application, config: EngineConfig) -> Result<Engine, Error> {
        // Calibrate the clocks now rather than on a shard's first message.
        let _ = metrics::wall_clock_ns(metrics::now_ns());
        // And pay for glommio's membarrier registration here rather than in a shard's first
        // sleep (see `membarrier`); without it glommio uses another barrier.
        let _ = membarrier::expedited();
        config.validate().map_err(Error::Config)?;
        let plan = Arc::new(app.plan()?);
        let n = config.cores.len();
        if config.pin {
            let online = config::online_cores();
            if let Some(c) = config.cores.iter().find(|c| !online.contains(c)) {
                return Err(Error::Config(format!(
                    "--cores: core {c} is not available to this process (available: {online:?})"
                )));
            }
        }
        let inputs = assign(&plan, Role::Source, &config.inputs, "--in")?;
        let outputs = assign(&plan, Role::Sink, &config.outputs, "--out")?;
        let mut parts: Vec<Parts> = (0..n).map(|_| HashMap::new()).collect();
        let mut endpoints = Vec::new();
        for (id, node) in plan.nodes.iter().enumerate() {
            let Some(endpoint) = &node.spec.endpoint else {
                continue;
            };
            let address = match node.role {
                Role::Source => inputs.get(&id),
                _ => outputs.get(&id),
            }
            .map(|a| a.to_string());
            let flag = if node.role == Role::Source {
                "--in"
            } else {
                "--out"
            };
            let (opened, shown) =
                endpoint
                    .open(&node.name, address.as_deref(), n)
                    .map_err(|e| match e {
                        // Name the flag the address came from.
                        Error::Connector { name, message } if address.is_some() => {
                            Error::Connector {
                                name: format!("{flag}: {name}"),
                                message,
                            }
                        }
                        e => e,
                    })?;
            if opened.len() != n {
                return Err(Error::Connector {
                    name: node.name.clone(),
                    message: format!("opened {} parts for {n} shards", opened.len()),
                });
            }
            for (shard, part) in opened.into_iter().enumerate() {
                parts[shard].insert(id, part);
            }
            if let Some(shown) = shown {
                endpoints.push((node.name.clone(), shown));
            }
        }
        let sources: Vec<(String, SocketAddr)> = plan
            .of_role(Role::Source)
            .filter_map(|id| {
                let name = &plan.nodes[id].name;
                let (_, shown) = endpoints.iter().find(|(n, _)| n == name)?;
                Some((name.clone(), shown.parse().ok()?))
            })
            .collect();

        // The shards' executors: reused from earlier engines where possible (see
        // `executors`), each with its doorbell.
        let mut executors = Vec::with_capacity(n);
        for index in 0..n {
            let kind = Kind {
                core: config.pin.then_some(config.cores[index]),
                poll: config.poll,
            };
            match Executor::take(kind, &format!("bettong-shard-{index}")) {
                Ok(e) => executors.push(e),
                Err(e) => {
                    executors.into_iter().for_each(Executor::give_back);
                    return Err(e);
                }
            }
        }
        let bells: Vec<Arc<Doorbell>> = executors.iter().map(|e| e.bell.clone()).collect();
        // Checkpoints: what each shard restores, and where checkpoint requests and reports go.
        let resilience = match &config.resilience_dir {
            Some(dir) => Some(Resilience::open(dir, &plan, n, &bells)?),
            None => None,
        };
        let mut restored: Vec<checkpoints::Restored> = match &resilience {
            Some(r) => r.restore(n)?,
            None => (0..n).map(|_| checkpoints::Restored::default()).collect(),
        };
        let rings = Arc::new(RingRegistry::new(bells.clone()));
        let stop = StopHandle(Arc::new(StopSignal {
            stopped: AtomicBool::new(false),
            shards: bells.iter().map(|b| Waiter::new(Some(b))).collect(),
            sources_left: std::sync::atomic::AtomicUsize::new(
                plan.of_role(Role::Source).count() * n,
            ),
        }));
        let (started_tx, started_rx) = mpsc::channel::<Result<(), Error>>();
        let (live_tx, live_rx) = mpsc::channel::<Arc<LiveCounters>>();
        let (period_tx, period_rx) = mpsc::channel::<ShardPeriod>();
        let reporter = Reporting::start(app.name(), n, &config, period_rx, stop.clone())?;
        let mut shards = Vec::with_capacity(n);
        for ((index, shard_parts), executor) in parts.into_iter().enumerate().zip(executors) {
            let start = ShardStart {
                restored: std::mem::take(&mut restored[index]),
                requests: resilience.as_ref().map(|r| r.requests.clone()),
                reports: resilience.as_ref().map(|r| r.reports_tx.clone()),
                index,
                shards: n,
                plan: plan.clone(),
                config: config.clone(),
                parts: shard_parts,
                bell: executor.bell.clone(),
                rings: rings.clone(),
                stop: stop.clone(),
                started: started_tx.clone(),
                live: live_tx.clone(),
                periods: period_tx.clone(),
            };
            shards.push(executor.run(
                format!("bettong-shard-{index}"),
                Box::new(move || Box::pin(run_shard(start))),
            ));
        }
        drop((started_tx, live_tx, period_tx));
        for _ in 0..n {
            let failed = match started_rx.recv() {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => {
                    // A shard died (panicked) while building: the others may wait on it for
                    // ever, so they are stopped but not waited for.
                    stop.stop();
                    return Err(Error::Shard("a shard exited during start-up".to_string()));
                }
            };
            stop.stop();
            for outcome in shards {
                let _ = outcome.recv();
            }
            return Err(failed);
        }
        let coordinator = match resilience {
            Some(r) => Some(
                checkpoints::spawn_coordinator(
                    r.store,
                    r.requests,
                    r.reports_rx,
                    stop.clone(),
                    config.checkpoint_interval,
                )
                .map_err(Error::Io)?,
            ),
            None => None,
        };
        let live: Vec<Arc<LiveCounters>> = live_rx.try_iter().collect();
        if let Some(r) = &reporter {
            r.serve(&live);
        }
        Ok(Engine {
            shards,
            stop,
            sources,
            endpoints,
            cores: config.cores,
            live,
            reporter,
            coordinator,
            after_failure: config.drain_timeout.unwrap_or(Duration::from_secs(5)),
        })
    }

    /// Each TCP source's name and the address it listens on (with the real port when 0 was
    /// asked).
    pub fn sources(&self) -> &[(String, SocketAddr)] {
        &self.sources
    }

    /// Every source's and sink's name and what its endpoint resolved to, in plan order.
    pub fn endpoints(&self) -> &[(String, String)] {
        &self.endpoints
    }

    /// The core each shard runs on, by shard index.
    pub fn cores(&self) -> &[usize] {
        &self.cores
    }

    /// Where the metrics endpoint (`EngineConfig::metrics_addr`) listens, with the real port
    /// when 0 was asked: `GET /metrics` (Prometheus text format) and `GET /health`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.reporter.as_ref().and_then(Reporting::metrics_addr)
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
    pub fn stop(self) -> Result<Summary, Error> {
        self.stop.stop();
        self.join()
    }

    /// Waits for every shard to finish (after a stop) and returns the merged measurements.
    ///
    /// A shard that fails (a computation of it panicked) ends the run: the engine is stopped
    /// at once, and this returns the failure once the other shards have stopped, or once
    /// `--drain-timeout` (5 s when unbounded) and a second more have passed, whichever is
    /// first. Those that have not stopped by then (waiting for the failed shard's messages)
    /// are left behind, and the error names them.
    pub fn join(mut self) -> Result<Summary, Error> {
        self.collect()
    }

    /// [`join`](Self::join)'s work, which a drop does too.
    fn collect(&mut self) -> Result<Summary, Error> {
        let mut total = Summary::default();
        let mut failed: Option<usize> = None;
        let mut deadline = None;
        let mut pending: Vec<(usize, executors::Outcome)> = std::mem::take(&mut self.shards)
            .into_iter()
            .enumerate()
            .collect();
        while !pending.is_empty() {
            // Each shard in turn, briefly: any of them may be the one that fails.
            pending.retain(|(i, outcome)| {
                match outcome.recv_timeout(Duration::from_millis(10)) {
                    Ok(s) => total.merge(&s),
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        failed = failed.or(Some(*i));
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => return true,
                }
                false
            });
            if failed.is_some() && deadline.is_none() {
                self.stop.stop();
                // A second past the drain's own deadline, so that shards that drain in time
                // are not taken for stuck.
                deadline =
                    Some(std::time::Instant::now() + self.after_failure + Duration::from_secs(1));
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                break;
            }
        }
        let stuck: Vec<usize> = pending.iter().map(|(i, _)| *i).collect();
        // Both end once every shard has ended; with shards left behind they would wait too.
        if stuck.is_empty() {
            if let Some(c) = self.coordinator.take() {
                let _ = c.join();
            }
            if let Some(r) = self.reporter.take() {
                let _ = r.join();
            }
        }
        match failed {
            None => Ok(total),
            Some(i) if stuck.is_empty() => {
                Err(Error::Shard(format!("shard {i} failed (panicked)")))
            }
            Some(i) => Err(Error::Shard(format!(
                "shard {i} failed (panicked); shard(s) {stuck:?} did not stop within {:?} \
                 after it and were left behind",
                self.after_failure
            ))),
        }
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
        let _ = self.collect();
    }
}

/// Matches `--in` (or `--out`) addresses to the plan's sources (or sinks) that take one, by
/// name; a single unnamed address goes to the only one. Returns node id → address.
fn assign(
    plan: &Plan,
    role: Role,
    given: &[(Option<String>, config::Address)],
    flag: &str,
) -> Result<HashMap<usize, config::Address>, Error> {
    let kind = if role == Role::Source {
        "source"
    } else {
        "sink"
    };
    let wanting: Vec<(usize, &str)> = plan
        .of_role(role)
        .filter(|&id| {
            plan.nodes[id]
                .spec
                .endpoint
                .as_ref()
                .is_some_and(|e| e.takes_address())
        })
        .map(|id| (id, plan.nodes[id].name.as_str()))
        .collect();
    let names: Vec<&str> = wanting.iter().map(|(_, n)| *n).collect();
    for (i, (name, _)) in given.iter().enumerate() {
        if let Some(name) = name {
            if given[..i].iter().any(|(n, _)| n.as_deref() == Some(name)) {
                return Err(Error::Config(format!("{flag} names {kind} {name} twice")));
            }
        }
    }
    let mut out = HashMap::new();
    if let ([(None, addr)], [(id, _)]) = (given, wanting.as_slice()) {
        out.insert(*id, addr.clone());
        return Ok(out);
    }
    for (id, name) in &wanting {
        match given.iter().find(|(n, _)| n.as_deref() == Some(*name)) {
            Some((_, addr)) => {
                out.insert(*id, addr.clone());
            }
            None => {
                return Err(Error::Config(format!(
                    "no address for {kind} {name}: give {flag} {} (one NAME@HOST:PORT per {kind})",
                    names
                        .iter()
                        .map(|n| format!("{n}@HOST:PORT"))
                        .collect::<Vec<_>>()
                        .join(",")
                )))
            }
        }
    }
    if let Some((n, a)) = given
        .iter()
        .find(|(n, _)| n.as_deref().is_none_or(|n| !names.contains(&n)))
    {
        return Err(Error::Config(match n {
            Some(n) => format!(
                "{flag} names a {kind} {n} that the application does not have (it has {})",
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            ),
            None => format!(
                "{flag} {a}: give the {kind}'s name (NAME@HOST:PORT), the application has {} {kind}s that take an address",
                names.len()
            ),
        }));
    }
    Ok(out)
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
///
/// A busy port is tried again for up to [`PROBE_PATIENCE`]: the listener of an engine that was
/// just killed can outlive its process, because the kernel releases the sockets an io_uring
/// holds when it tears the ring down, after the process is gone (`tests/connector.rs` restarts
/// word count right after SIGKILL and saw the port busy once in about 250 starts without it).
pub(crate) fn probe_port(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let until = std::time::Instant::now() + PROBE_PATIENCE;
    loop {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        match socket.bind(&addr.into()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if std::time::Instant::now() >= until {
                    return Err(std::io::Error::new(
                        e.kind(),
                        "the address is already in use by another listener",
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// How long [`probe_port`] waits for a busy port to come free.
const PROBE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds a listening socket that this engine's other shards can share (SO_REUSEPORT).
pub(crate) fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
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
struct ShardStart {
    index: usize,
    shards: usize,
    plan: Arc<Plan>,
    config: EngineConfig,
    parts: Parts,
    bell: Arc<Doorbell>,
    rings: Arc<RingRegistry>,
    stop: StopHandle,
    started: mpsc::Sender<Result<(), Error>>,
    live: mpsc::Sender<Arc<LiveCounters>>,
    periods: mpsc::Sender<ShardPeriod>,
    restored: checkpoints::Restored,
    requests: Option<Arc<checkpoints::Requests>>,
    reports: Option<mpsc::Sender<checkpoints::PartReport>>,
}

/// Everything one shard does, from instantiating the plan to its final measurements.
///
/// The stop follows the graph: sources end (each reads its open inputs to their end and sends
/// end of stream), then every exchange in topological order closes its outgoing rings and
/// drains the incoming ones to their end, then every sink delivers what is left.
async fn run_shard(start: ShardStart) -> Summary {
    let ShardStart {
        index,
        shards,
        plan,
        config,
        parts,
        bell,
        rings,
        stop,
        started,
        live,
        periods,
        restored,
        requests,
        reports,
    } = start;
    let mut core = ShardCore::new(index, shards, config.clone(), bell);
    core.checkpoints.reports = reports;
    if let Some(id) = restored.checkpoint {
        core.metrics.live.checkpoint_last_committed.set(id);
    }
    *core.checkpoints.restored.borrow_mut() = restored;
    let core = Rc::new(core);
    let _ = live.send(core.metrics.live.clone());
    let mut sb = ShardBuild::new(core.clone(), rings, parts);
    if let Err(e) = instantiate(&plan, &mut sb) {
        let _ = started.send(Err(e));
        let _ = periods.send(ShardPeriod::Done(core.metrics.take_period()));
        return core.metrics.snapshot();
    }
    // Tasks that run until the shard ends; cancelled then, because glommio does not drop
    // the tasks still pending when an executor ends (what they hold would leak).
    let mut background = Vec::new();
    if let Some(interval) = config.metrics_interval {
        background.push(glommio::spawn_local(reporter::shard_periods(
            index,
            interval,
            core.metrics.clone(),
            periods.clone(),
        )));
    }
    let ShardBuild {
        sources,
        exchanges,
        tasks,
        mut sinks,
        states,
        injectors,
        ..
    } = sb;
    // Checkpoint barriers: injected into every source of the shard between messages, when
    // the coordinator asks.
    if let Some(requests) = requests {
        let core = core.clone();
        background.push(glommio::spawn_local(async move {
            loop {
                let (id, part) = match requests.next(index).await {
                    checkpoints::Handed::Request(id, part) => (id, part),
                    checkpoints::Handed::Outcomes(o) => {
                        core.checkpoints.resolved(o, &core.metrics.live);
                        continue;
                    }
                };
                // Ready at once when the shard has no sinks, or when every sink pre-committed
                // already (the barrier came from another shard before the request).
                if let Some(done) = core.checkpoints.begin(id, part) {
                    core.checkpoints
                        .write(index, done, &core.metrics.live)
                        .await;
                }
                for inject in &injectors {
                    inject(id);
                }
            }
        }));
    }
    sinks.sort_by_key(|(rank, _, _)| *rank);
    let sinks: Vec<_> = sinks
        .into_iter()
        .map(|(_, finish, task)| (finish, task.map(glommio::spawn_local)))
        .collect();
    // The stop steps in graph order: at each rank, first the exchange into the operator (its
    // rings close and drain), then the operator's own task (it ends after end of stream).
    let mut steps: Vec<(usize, u8, StopStep)> = exchanges
        .into_iter()
        .map(|x| {
            let movers: Vec<_> = x.movers.into_iter().map(glommio::spawn_local).collect();
            let step = StopStep::Exchange(x.closing, movers, x.drain.map(glommio::spawn_local));
            (x.order, 0, step)
        })
        .collect();
    steps.extend(
        tasks
            .into_iter()
            .map(|(rank, t)| (rank, 1, StopStep::Task(glommio::spawn_local(t)))),
    );
    steps.sort_by_key(|(rank, kind, _)| (*rank, *kind));
    let sources: Vec<_> = sources
        .into_iter()
        .map(|(_, task)| {
            let (stop, core) = (stop.clone(), core.clone());
            glommio::spawn_local(async move {
                task.await;
                // A source that ended by itself (a file read to its end), not by the stop.
                if !core.stop.is_set() {
                    stop.source_ended();
                }
            })
        })
        .collect();
    let _ = started.send(Ok(()));
    drop(started);

    stop.stopped(index).await;
    core.stop.set();
    // The drain deadline: whatever is still open when it passes (an idle client, a sink that
    // does not read or does not listen) is given up by its connector, so that the stop ends
    // in bounded time. Outputs no sink acknowledged by then are counted as undelivered.
    if let Some(timeout) = config.drain_timeout {
        let core = core.clone();
        background.push(glommio::spawn_local(async move {
            glommio::timer::sleep(timeout).await;
            core.deadline.set();
        }));
    }
    for s in sources {
        s.await;
    }
    core.flush();
    for (_, _, step) in steps {
        match step {
            StopStep::Exchange(closing, movers, drain) => {
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
            StopStep::Task(t) => t.await,
        }
    }
    for (finish, task) in sinks {
        finish.set();
        if let Some(t) = task {
            t.await;
        }
    }
    for task in background {
        task.cancel().await;
    }
    let _ = periods.send(ShardPeriod::Done(core.metrics.take_period()));
    let mut summary = core.metrics.snapshot();
    for (name, view) in &states {
        summary.add_state(name, view.entities() as u64);
    }
    summary
}

/// One step of a shard's stop (see `run_shard`).
enum StopStep {
    /// An exchange: close this shard's outgoing rings (after their movers empty the
    /// overflow), then drain the incoming ones to their end.
    Exchange(
        Vec<Rc<shard::Notify>>,
        Vec<glommio::Task<()>>,
        Option<glommio::Task<()>>,
    ),
    /// An operator's task, which ends after end of stream.
    Task(glommio::Task<()>),
}
