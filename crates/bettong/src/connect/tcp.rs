//! The TCP connectors: a source that listens (one listener per shard on the same port,
//! SO_REUSEPORT; a shard hands a new connection to the shard with the fewest, see
//! `crate::net::balance`) and reads
//! `[u32 BE len][payload]` frames, and a sink that keeps one connection per shard and writes
//! the encoder's bytes to it in batches. The socket work is in `crate::net`; this module fits
//! it to the [`Source`] and [`Sink`] traits like any other connector.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::format::{Record, SinkFile};
use crate::codec::{DecodeError, Decoder, Encoder, FrameReader, FrameTooLarge};
use crate::connect::connector_source;
use crate::connect::{Opened, Sink, SinkContext, SinkInput, SinkShard, Source, SourceContext};
use crate::error::Error;
use crate::event::Stamp;
use crate::net::balance::Balancer;
use crate::net::sink::SinkBuffer;
use crate::net::source::{accept_loop, each_frame, fd_reserve, Connections, FrameBatch};
use crate::runtime::config::{Address, ConnectorAddress};
use crate::runtime::shard::{FrameHandler, Frames, SourceRuntime};
use crate::runtime::split::CHUNK;

/// A TCP source: a listener (one per shard, same port) taking `[u32 BE len][payload]` frames,
/// each decoded into one message by the decoder. Its address comes from `--in NAME@HOST:PORT`.
///
/// ```
/// use bettong::{DecodeError, TcpSource};
/// let text = TcpSource::new(|b: &[u8]| -> Result<String, DecodeError> {
///     String::from_utf8(b.to_vec()).map_err(|_| DecodeError::new("not UTF-8"))
/// });
/// # let _ = text;
/// ```
pub struct TcpSource<D: Decoder> {
    decoder: Arc<D>,
    event_time: Option<EventTime<D::Out>>,
    idle: Duration,
}

/// How a source reads a message's event time (nanoseconds since the Unix epoch).
type EventTime<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;

/// A TCP source's frames on one shard: each payload decoded, stamped and run through the
/// graph.
struct DecodeEmit<D: Decoder> {
    decoder: Arc<D>,
    event_time: Option<EventTime<D::Out>>,
    emit: SourceContext<D::Out>,
    /// The messages of a read decoded and not yet handed on, when the operator downstream
    /// takes batches (a `key_by` exchange, which splits a batch by destination where it lies,
    /// `runtime::split`; a state computation with no exchange before it, on 1 shard, which
    /// runs a batch in one loop) and the messages of a read share its stamp (no event-time
    /// function).
    /// Handed on every [`CHUNK`] messages and at the end of each read.
    held: Option<RefCell<Vec<D::Out>>>,
}

impl<D: Decoder> DecodeEmit<D> {
    fn new(
        decoder: Arc<D>,
        event_time: Option<EventTime<D::Out>>,
        emit: SourceContext<D::Out>,
    ) -> Self {
        let held = (event_time.is_none() && emit.takes_batches())
            .then(|| RefCell::new(Vec::with_capacity(CHUNK)));
        DecodeEmit {
            decoder,
            event_time,
            emit,
            held,
        }
    }
}

impl<D: Decoder> FrameHandler for DecodeEmit<D> {
    #[inline]
    fn frame(&self, payload: &[u8], stamp: Stamp) -> Result<u64, DecodeError> {
        // A `match`, not `?`: with `?` the decoded message was copied twice more (into `?`'s
        // `ControlFlow`, then out of it, field by field) before the copy that passes it on,
        // each copy re-reading in 16-byte loads what the last had written in smaller pieces
        // (store-forwarding stalls: perf put most of this closure's samples on those loads).
        // Market Spread, 1 shard, `bench market-spread`: the closure's samples 1389 -> 998 per
        // 10 M messages (perf, cpu-clock), the shard's user time 82 -> 67 ns/msg.
        // The message moves from the decoder's result into `emit`'s argument in each arm: with
        // one `emit` after a `match` on the event-time function, it was copied out of the
        // result first, before that function was even looked at (254.7 -> 245.8 instructions
        // per message over TCP, `perf/callgrind.sh`).
        match (self.decoder.decode(payload), &self.event_time) {
            (Ok(msg), None) => {
                self.emit.emit(msg, stamp);
                Ok(stamp.event_ns)
            }
            (Ok(msg), Some(f)) => {
                let event_ns = f(&msg);
                self.emit.emit(
                    msg,
                    Stamp {
                        ingest_ns: stamp.ingest_ns,
                        event_ns,
                    },
                );
                Ok(event_ns)
            }
            (Err(e), _) => Err(e),
        }
    }

    fn frames(
        &self,
        reader: &mut FrameReader,
        batch: &mut FrameBatch<'_>,
    ) -> Result<Frames, FrameTooLarge> {
        let Some(held) = &self.held else {
            return each_frame(reader, batch, |payload, stamp| self.frame(payload, stamp));
        };
        // Every message of the read is handed on before this returns (also when a gauge
        // pauses it): nothing is held across a wait, where a barrier or a watermark could
        // pass it. The gauges, looked at every 16 frames, then lag by at most a chunk.
        let end = each_frame(reader, batch, |payload, stamp| {
            // A `match`, not `?`, as in `frame`.
            match self.decoder.decode(payload) {
                Ok(msg) => {
                    let mut held = held.borrow_mut();
                    held.push(msg);
                    if held.len() >= CHUNK {
                        self.emit.emit_batch(&mut held, stamp);
                    }
                    Ok(stamp.event_ns)
                }
                Err(e) => Err(e),
            }
        });
        let mut held = held.borrow_mut();
        if !held.is_empty() {
            self.emit.emit_batch(&mut held, batch.stamp);
        }
        end
    }
}

/// How often a TCP source tells the operators downstream how far its event time has come.
const WATERMARK_INTERVAL: Duration = Duration::from_millis(20);

impl<D: Decoder> TcpSource<D> {
    /// A TCP source that decodes each frame with `decoder`. A message's event time is the
    /// wall-clock time its frame was read, unless [`with_event_time`](Self::with_event_time)
    /// says otherwise.
    pub fn new(decoder: D) -> Self {
        TcpSource {
            decoder: Arc::new(decoder),
            event_time: None,
            idle: Duration::from_millis(250),
        }
    }

    /// Reads each message's event time with `f` (nanoseconds since the Unix epoch).
    ///
    /// Each connection's watermark is the latest event time it has delivered; the source's,
    /// sent downstream every 20 ms when it moves, is the minimum over its connections on the
    /// shard that delivered data within the idle timeout.
    ///
    /// ```
    /// use bettong::{DecodeError, TcpSource};
    /// // Frames of `EVENT_MS,VALUE`.
    /// let src = TcpSource::new(|b: &[u8]| -> Result<(u64, String), DecodeError> {
    ///     let s = std::str::from_utf8(b).map_err(|_| DecodeError::new("not UTF-8"))?;
    ///     let (t, v) = s.split_once(',').ok_or(DecodeError::new("no comma"))?;
    ///     Ok((t.parse().map_err(|_| DecodeError::new("bad time"))?, v.to_string()))
    /// })
    /// .with_event_time(|m: &(u64, String)| m.0 * 1_000_000);
    /// # let _ = src;
    /// ```
    pub fn with_event_time(mut self, f: impl Fn(&D::Out) -> u64 + Send + Sync + 'static) -> Self {
        self.event_time = Some(Arc::new(f));
        self
    }

    /// A connection that has delivered nothing for this long stops holding the watermark
    /// back, and a shard with no such connection says its source is idle (default 250 ms).
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }
}

/// One shard's part of a [`TcpSource`]: its listener, or (for `file:PATH`) the file to read
/// (shard 0 reads it; the keyed exchange downstream spreads the work).
pub struct SourcePart(Endpoint);

enum Endpoint {
    /// A listener, and the balancer that spreads the source's connections over its shards
    /// (none on one shard).
    Listener(std::net::TcpListener, Option<Arc<Balancer>>),
    File(Option<std::path::PathBuf>),
    /// A listener whose clients speak the connector protocol.
    Connector(
        std::net::TcpListener,
        ConnectorAddress,
        Arc<connector_source::Registry>,
    ),
}

impl<D: Decoder> Source for TcpSource<D> {
    type Out = D::Out;
    type Part = SourcePart;

    fn takes_address(&self) -> bool {
        true
    }

    /// Binds one listener per shard on the address (SO_REUSEPORT), here on the starting
    /// thread so that port 0 resolves to one real port that all shards share. A `file:PATH`
    /// address replays a file of frames instead: the source ends at the end of the file (and
    /// the engine stops once every source has ended).
    fn open(
        &self,
        name: &str,
        address: Option<&str>,
        shards: usize,
    ) -> Result<Opened<SourcePart>, Error> {
        let connector = |message: String| Error::Connector {
            name: format!("source {name}"),
            message,
        };
        let address = address.ok_or_else(|| connector("no address given".to_string()))?;
        // HOST:PORT, file:PATH, or the connector protocol's
        // HOST:PORT:COOKIE:MAX_CREDITS:REFILL_CREDITS.
        let (mut bound, protocol) = match address.parse::<Address>().map_err(connector)? {
            Address::File(path) => {
                std::fs::metadata(&path)
                    .map_err(|e| connector(format!("{}: {e}", path.display())))?;
                return Ok(Opened {
                    parts: (0..shards)
                        .map(|s| SourcePart(Endpoint::File((s == 0).then(|| path.clone()))))
                        .collect(),
                    endpoint: Some(address.to_string()),
                });
            }
            Address::Tcp(a) => (a, None),
            Address::Connector(c) => (c.addr, Some((c, connector_source::Registry::new()))),
            Address::TwoPhase(_) => {
                return Err(connector(format!(
                    "`{address}` is not a source address (HOST:PORT, file:PATH or \
                     HOST:PORT:COOKIE:MAX_CREDITS:REFILL_CREDITS)"
                )))
            }
        };
        crate::runtime::probe_port(bound)
            .map_err(|e| connector(format!("cannot listen on {bound}: {e}")))?;
        let mut parts = Vec::with_capacity(shards);
        let balancer = (shards > 1).then(|| Balancer::new(shards));
        for _ in 0..shards {
            let l = crate::runtime::bind_reuseport(bound)
                .map_err(|e| connector(format!("cannot listen on {bound}: {e}")))?;
            bound = l.local_addr().map_err(|e| connector(e.to_string()))?;
            parts.push(SourcePart(match &protocol {
                None => Endpoint::Listener(l, balancer.clone()),
                Some((c, registry)) => Endpoint::Connector(l, c.clone(), registry.clone()),
            }));
        }
        Ok(Opened {
            parts,
            endpoint: Some(bound.to_string()),
        })
    }

    fn run(
        &self,
        part: SourcePart,
        ctx: SourceContext<D::Out>,
    ) -> impl Future<Output = ()> + 'static {
        let decoder = self.decoder.clone();
        let event_time = self.event_time.clone();
        let idle = self.idle;
        async move {
            let core = ctx.core().clone();
            let source = Rc::new(SourceRuntime {
                name: ctx.name().to_string(),
                on_frame: Box::new(DecodeEmit::new(decoder, event_time, ctx.clone())),
                gauges: ctx.gauges().clone(),
                counters: core.metrics.source(ctx.name()),
                watermarks: Default::default(),
                connector: None,
            });
            let (listener, source, balancer) = match part.0 {
                Endpoint::Listener(l, balancer) => (l, source, balancer),
                Endpoint::Connector(l, settings, registry) => {
                    let listening = l
                        .local_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
                    let shard = connector_source::ConnectorShard::new(
                        settings,
                        registry,
                        core.index,
                        listening,
                        ctx.checkpointing(),
                        &ctx.restored_streams(),
                    );
                    let at_barrier = shard.clone();
                    ctx.track_streams(move |id| at_barrier.at_barrier(id));
                    let (on_outcome, mut outcomes) = (shard.clone(), ctx.checkpoint_outcomes());
                    let stopping = ctx.clone();
                    ctx.spawn(futures_lite::future::or(
                        async move {
                            loop {
                                let (id, committed) = outcomes.next().await;
                                on_outcome.outcome(id, committed);
                            }
                        },
                        async move { stopping.stopping().await },
                    ));
                    let Ok(mut source) = Rc::try_unwrap(source) else {
                        unreachable!("the source runtime is not shared yet")
                    };
                    source.connector = Some(shard);
                    (l, Rc::new(source), None)
                }
                Endpoint::File(None) => return,
                Endpoint::File(Some(path)) => {
                    let max_frame = core.config.max_frame;
                    let offset = Rc::new(std::cell::Cell::new(0));
                    ctx.track_offset(offset.clone());
                    let from = ctx.restored_offset().unwrap_or(0);
                    let watermark = |t: u64| ctx.watermark(t);
                    let last = crate::net::file::read_framed_file(
                        path, from, offset, &source, &core, max_frame, &watermark,
                    )
                    .await;
                    if last > 0 {
                        ctx.watermark(last);
                    }
                    return;
                }
            };
            ctx.spawn(announce_progress(ctx.clone(), source.clone(), idle));
            let conns = Rc::new(Connections::new(balancer));
            let fd = listener.into_raw_fd();
            // SAFETY: into_raw_fd gave up ownership of the open listening socket; the glommio
            // listener takes it over and closes it on drop.
            let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
            let counters = source.counters.clone();
            let accept = glommio::spawn_local(accept_loop(
                listener,
                fd,
                source,
                core.clone(),
                conns.clone(),
                core.config.max_frame,
                fd_reserve(core.shards, core.config.outputs.len()),
            ));
            ctx.stopping().await;
            conns.stop();
            accept.await;
            // Read every open connection to its end, or until the drain timeout cuts the ones
            // still open (an idle client must not hold the stop forever).
            let cut = async {
                ctx.drain_deadline().await;
                let cut = conns.cut();
                if cut > 0 {
                    tracing::warn!(
                        "shard {}: source {}: drain timeout: cutting {cut} open connection(s)",
                        core.index,
                        ctx.name()
                    );
                }
                core.metrics.cut_connections(cut as u64);
                counters.cut.add(cut as u64);
                conns.until_all_closed().await;
            };
            futures_lite::future::or(conns.until_all_closed(), cut).await;
        }
    }
}

/// Sends the source's watermark downstream when it moves (every [`WATERMARK_INTERVAL`] at
/// most), or `Idle` once no connection has delivered data for `idle`; ends when the engine
/// stops.
async fn announce_progress<T: 'static>(
    ctx: SourceContext<T>,
    source: Rc<SourceRuntime>,
    idle: Duration,
) {
    use crate::connect::watermarks::Progress;
    let started = crate::metrics::now_ns();
    let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
    let mut said = None;
    let ticks = async {
        loop {
            glommio::timer::sleep(WATERMARK_INTERVAL).await;
            let now = crate::metrics::now_ns();
            let progress = source.watermarks.progress(now, idle_ns);
            match progress {
                Progress::Watermark(w) if said.as_ref() != Some(&Progress::Watermark(w)) => {
                    ctx.watermark(w);
                    ctx.flush();
                }
                // Idle only once the source has had time to get a connection.
                Progress::Idle
                    if said != Some(Progress::Idle) && now.saturating_sub(started) >= idle_ns =>
                {
                    ctx.idle();
                    ctx.flush();
                }
                _ => continue,
            }
            said = Some(progress);
        }
    };
    futures_lite::future::or(ticks, ctx.stopping()).await;
}

/// A TCP sink: every shard keeps one connection to the `--out NAME@HOST:PORT` address and
/// writes the encoder's bytes to it in batches.
///
/// ```
/// use bettong::TcpSink;
/// let lines = TcpSink::new(|s: &String, out: &mut Vec<u8>| {
///     out.extend_from_slice(s.as_bytes());
///     out.push(b'\n');
/// });
/// # let _ = lines;
/// ```
pub struct TcpSink<E> {
    encoder: Arc<E>,
}

impl<E> TcpSink<E> {
    /// A TCP sink that writes each output as `encoder` encodes it.
    pub fn new(encoder: E) -> Self {
        TcpSink {
            encoder: Arc::new(encoder),
        }
    }
}

/// One shard's part of a [`TcpSink`]: the address to connect to, or (for `file:PATH`) the
/// file this shard writes (`PATH` with one shard, `PATH.N` for shard N with several).
pub struct SinkPart(SinkEndpoint);

#[derive(Clone)]
enum SinkEndpoint {
    Tcp(SocketAddr),
    /// This shard's file, and every shard's.
    File(std::path::PathBuf, Vec<std::path::PathBuf>),
    /// A two-phase-commit connector sink.
    TwoPhase(SocketAddr),
}

impl<T: Send + 'static, E: Encoder<T>> Sink<T> for TcpSink<E> {
    type Part = SinkPart;

    fn takes_address(&self) -> bool {
        true
    }

    fn open(
        &self,
        name: &str,
        address: Option<&str>,
        shards: usize,
    ) -> Result<Opened<SinkPart>, Error> {
        let connector = |message: String| Error::Connector {
            name: format!("sink {name}"),
            message,
        };
        let address = address.ok_or_else(|| connector("no address given".to_string()))?;
        let (endpoint, shown) = match address.parse::<Address>().map_err(connector)? {
            Address::File(path) => return open_files(&path, shards, address).map_err(connector),
            Address::Tcp(a) => (SinkEndpoint::Tcp(a), a.to_string()),
            Address::TwoPhase(a) => (SinkEndpoint::TwoPhase(a), format!("2pc:{a}")),
            Address::Connector(_) => {
                return Err(connector(format!(
                    "`{address}` is not a sink address (HOST:PORT, file:PATH or 2pc:HOST:PORT)"
                )))
            }
        };
        Ok(Opened {
            parts: (0..shards).map(|_| SinkPart(endpoint.clone())).collect(),
            endpoint: Some(shown),
        })
    }

    fn start(&self, part: SinkPart, ctx: SinkContext) -> SinkShard<T> {
        let addr = match part.0 {
            SinkEndpoint::Tcp(addr) => addr,
            SinkEndpoint::File(path, all) => {
                return file_sink(path, &all, self.encoder.clone(), ctx)
            }
            SinkEndpoint::TwoPhase(addr) => {
                return crate::connect::twopc::sink(addr, self.encoder.clone(), ctx)
            }
        };
        let core = ctx.core().clone();
        let buffer = Rc::new(
            SinkBuffer::new(core.config.sink_buffer).counted(core.metrics.sink(ctx.name())),
        );
        ctx.add_gauge(buffer.gauge.clone());
        let writer = buffer.clone().writer(addr, core.index, core.relief.clone());
        let b = buffer.clone();
        let task = async move {
            let finishing = async {
                ctx.finishing().await;
                b.finish();
            };
            // At the drain deadline the writer gives up (cuts a pending write, counts what the
            // peer has not acknowledged as undelivered) and ends.
            let give_up = async {
                ctx.drain_deadline().await;
                b.abandon(&core.relief);
                std::future::pending::<((), ())>().await
            };
            futures_lite::future::or(futures_lite::future::zip(writer, finishing), give_up).await;
            core.metrics.sink_report(b.report());
        };
        SinkShard::new(TcpSinkInput {
            buffer,
            encoder: self.encoder.clone(),
        })
        .with_task(task)
    }
}

struct TcpSinkInput<E> {
    buffer: Rc<SinkBuffer>,
    encoder: Arc<E>,
}

impl<T, E: Encoder<T>> SinkInput<T> for TcpSinkInput<E> {
    #[inline]
    fn write(&self, msg: T, _stamp: Stamp) {
        self.buffer.append(|out| self.encoder.encode(&msg, out));
    }
}

/// The parts of a file sink: `PATH` with one shard, `PATH.N` for shard N with several, each
/// created here (not emptied: a restart cuts it back to its checkpointed length), so a path
/// that cannot be written fails the start.
fn open_files(
    path: &std::path::Path,
    shards: usize,
    address: &str,
) -> Result<Opened<SinkPart>, String> {
    let files: Vec<std::path::PathBuf> = (0..shards)
        .map(|s| {
            if shards == 1 {
                path.to_path_buf()
            } else {
                let mut p = path.as_os_str().to_owned();
                p.push(format!(".{s}"));
                p.into()
            }
        })
        .collect();
    let mut parts = Vec::with_capacity(shards);
    for p in &files {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        parts.push(SinkPart(SinkEndpoint::File(p.clone(), files.clone())));
    }
    Ok(Opened {
        parts,
        endpoint: Some(address.to_string()),
    })
}

/// A file sink on one shard: outputs are encoded into a buffer that the sink's task appends to
/// the file on glommio's blocking pool (the shard never waits on the disk); a buffer over
/// `--sink-buffer` raises the gauge. A checkpoint barrier pre-commits once the bytes before it
/// are written and synced, recording the file's length then; after a restart the file is cut
/// back to the length the restored checkpoint recorded (what follows is made again), so a
/// replayable source into a file sink is exactly-once across crashes.
///
/// The committed lengths are kept by file (see [`SinkFile`]): after a restart on another shard
/// count, shard 0 also cuts back the files no shard writes any more and records them in every
/// checkpoint from then on.
fn file_sink<T: 'static, E: Encoder<T>>(
    path: std::path::PathBuf,
    all: &[std::path::PathBuf],
    encoder: Arc<E>,
    ctx: SinkContext,
) -> SinkShard<T> {
    let key = |p: &std::path::Path| p.display().to_string();
    let restored = ctx
        .core()
        .checkpoints
        .restored
        .borrow()
        .files
        .get(ctx.name())
        .cloned();
    let base = match &restored {
        Some(files) => files.get(&key(&path)).copied().unwrap_or(0),
        // A checkpoint without file records (taken before they existed) has positions by
        // shard.
        None => ctx.restored_position().unwrap_or(0),
    };
    let frozen: Vec<(String, u64)> = match &restored {
        Some(files) if ctx.shard() == 0 => files
            .iter()
            .filter(|(f, _)| !all.iter().any(|a| key(a) == **f))
            .map(|(f, p)| (f.clone(), *p))
            .collect(),
        _ => Vec::new(),
    };
    for (f, len) in &frozen {
        let cut = std::fs::OpenOptions::new()
            .write(true)
            .open(f)
            .and_then(|file| file.set_len(*len));
        match cut {
            Ok(()) => tracing::info!(
                "sink {}: {f} is no shard's file now; cut back to its committed {len} bytes",
                ctx.name()
            ),
            Err(e) => tracing::error!("sink {}: {f}: cannot cut back: {e}", ctx.name()),
        }
    }
    let file_key = key(&path);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(base).map(|()| f));
    let mut file = match file {
        Ok(f) => {
            use std::io::Seek;
            let mut f = f;
            let _ = f.seek(std::io::SeekFrom::Start(base));
            Some(f)
        }
        Err(e) => {
            tracing::error!("sink {}: {}: {e}", ctx.name(), path.display());
            None
        }
    };
    let shared = Rc::new(FileBuffer {
        buf: std::cell::RefCell::new(Vec::new()),
        encoded: std::cell::Cell::new(base),
        barriers: std::cell::RefCell::new(std::collections::VecDeque::new()),
        gauge: ctx.gauge(),
        limit: ctx.core().config.sink_buffer,
        wake: crate::runtime::shard::Notify::default(),
    });
    let b = shared.clone();
    let task = async move {
        let mut written = base;
        let finished = std::cell::Cell::new(false);
        loop {
            futures_lite::future::or(b.wake.notified(), async {
                ctx.finishing().await;
                finished.set(true);
            })
            .await;
            loop {
                let chunk = std::mem::take(&mut *b.buf.borrow_mut());
                // Barriers whose bytes are all out of the buffer: sync, then pre-commit.
                let due: Vec<(u64, u64)> = {
                    let upto = written + chunk.len() as u64;
                    let mut barriers = b.barriers.borrow_mut();
                    let n = barriers.iter().take_while(|(_, at)| *at <= upto).count();
                    barriers.drain(..n).collect()
                };
                if chunk.is_empty() && due.is_empty() {
                    break;
                }
                let sync = !due.is_empty() || finished.get();
                if let Some(f) = file.take() {
                    let len = chunk.len() as u64;
                    let (f, result) = glommio::executor()
                        .spawn_blocking(move || {
                            use std::io::Write;
                            let mut f = f;
                            let r = f.write_all(&chunk).and_then(|()| {
                                if sync {
                                    f.sync_data()
                                } else {
                                    Ok(())
                                }
                            });
                            (f, r)
                        })
                        .await;
                    match result {
                        Ok(()) => written += len,
                        Err(e) => tracing::error!(
                            "sink {}: {}: write failed: {e}",
                            ctx.name(),
                            path.display()
                        ),
                    }
                    file = Some(f);
                }
                for (id, at) in due {
                    let record = |file: &str, position: u64| {
                        ctx.core().checkpoints.record(
                            id,
                            Record::SinkFile(SinkFile {
                                sink: ctx.name().to_string(),
                                file: file.to_string(),
                                position,
                            }),
                        )
                    };
                    record(&file_key, at);
                    for (f, len) in &frozen {
                        record(f, *len);
                    }
                    ctx.precommit(id, Some(at));
                }
                if b.gauge.is_over() && b.buf.borrow().len() < b.limit {
                    b.gauge.set(false);
                    ctx.relieve();
                }
            }
            if finished.get() {
                return;
            }
        }
    };
    SinkShard::new(FileSinkInput { shared, encoder })
        .with_task(task)
        .with_precommit()
}

struct FileBuffer {
    buf: std::cell::RefCell<Vec<u8>>,
    /// The file's length once everything encoded so far is written.
    encoded: std::cell::Cell<u64>,
    /// Checkpoint barriers seen and the file length each pre-commits, oldest first.
    barriers: std::cell::RefCell<std::collections::VecDeque<(u64, u64)>>,
    gauge: crate::runtime::shard::Gauge,
    limit: usize,
    wake: crate::runtime::shard::Notify,
}

struct FileSinkInput<E> {
    shared: Rc<FileBuffer>,
    encoder: Arc<E>,
}

impl<T, E: Encoder<T>> SinkInput<T> for FileSinkInput<E> {
    #[inline]
    fn write(&self, msg: T, _stamp: Stamp) {
        let mut buf = self.shared.buf.borrow_mut();
        let was_empty = buf.is_empty();
        let before = buf.len();
        self.encoder.encode(&msg, &mut buf);
        let added = (buf.len() - before) as u64;
        self.shared.encoded.set(self.shared.encoded.get() + added);
        if buf.len() >= self.shared.limit {
            self.shared.gauge.set(true);
        }
        if was_empty {
            self.shared.wake.notify();
        }
    }

    fn control(&self, event: crate::Control) {
        if let crate::Control::Barrier(id) = event {
            let at = self.shared.encoded.get();
            self.shared.barriers.borrow_mut().push_back((id, at));
            self.shared.wake.notify();
        }
    }
}
