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
    /// every shard is accepting connections.
    pub fn start(app: Application, config: EngineConfig) -> Result<Engine, String> {
        // Calibrate the clock now rather than on a shard's first message.
        let _ = metrics::now_ns();
        let n = config.cores.len();
        if n == 0 {
            return Err("no cores to run on".to_string());
        }
        if config.pin {
            let online = config::online_cores();
            if let Some(c) = config.cores.iter().find(|c| !online.contains(c)) {
                return Err(format!(
                    "core {c} is not available to this process (available: {online:?})"
                ));
            }
        }
        let addrs = resolve_inputs(&app, &config)?;
        // Every shard gets its own listener on each source's port (SO_REUSEPORT), bound here so
        // that port 0 resolves to one real port that all shards share.
        let mut sources = Vec::new();
        let mut listeners: Vec<Vec<(String, std::net::TcpListener)>> =
            (0..n).map(|_| Vec::new()).collect();
        for (name, addr) in &addrs {
            let mut bound = *addr;
            for shard_listeners in listeners.iter_mut() {
                let l = bind_reuseport(bound)
                    .map_err(|e| format!("source {name}: cannot listen on {bound}: {e}"))?;
                bound = l.local_addr().map_err(|e| e.to_string())?;
                shard_listeners.push((name.clone(), l));
            }
            sources.push((name.clone(), bound));
        }

        let app = Arc::new(app);
        let bells = (0..n)
            .map(|_| Doorbell::new())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot create shard doorbells: {e}"))?;
        let rings = Arc::new(RingRegistry::new(bells.clone()));
        let stop = StopHandle(Arc::new(StopSignal {
            stopped: AtomicBool::new(false),
            shards: bells.iter().map(|b| Waiter::new(Some(b))).collect(),
        }));
        let (started_tx, started_rx) = mpsc::channel::<Result<(), String>>();
        let (live_tx, live_rx) = mpsc::channel::<Arc<LiveCounters>>();
        let (period_tx, period_rx) = mpsc::channel::<ShardPeriod>();
        let reporter = match config.metrics_interval {
            Some(interval) => {
                Some(Reporter::new(n, interval, config.metrics_json.as_ref())?.spawn(period_rx))
            }
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
                .map_err(|e| format!("cannot start shard {index} on core {core}: {e}"))?;
            shards.push(handle);
        }
        drop((started_tx, live_tx, period_tx));
        for _ in 0..n {
            match started_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    stop.stop();
                    return Err(e);
                }
                Err(_) => {
                    stop.stop();
                    return Err("a shard exited during start-up".to_string());
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
