//! The TCP source of one shard: its listener (one per shard on the same port, SO_REUSEPORT),
//! the hand-over of new connections to the shard with the fewest (see
//! [`balance`](crate::net::balance)), and one task per connection that reads frames and runs
//! them through the graph.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::AsyncRead;
use glommio::net::{TcpListener, TcpStream};

use crate::codec::{DecodeError, FrameReader, FrameTooLarge, ReadBuffers};
use crate::event::Stamp;
use crate::metrics::now_ns;
use crate::net::balance::{Balancer, Placement};
use crate::runtime::doorbell::Waiter;
use crate::runtime::shard::{
    any_over, yield_after_batch, Frames, ShardCore, SourceRuntime, WaitList,
};

/// Bytes read per `read` call at most by a busy connection (a frame larger than this gets a
/// buffer of its own size): large enough that it delivers hundreds of small frames per system
/// call. These buffers are lent from a per-shard pool only while a connection's reads fill its
/// buffer, and given back when its socket has nothing more to read.
const READ_BUFFER: usize = 256 * 1024;

/// The buffer a connection reads into first, and keeps while its traffic is light.
const SMALL_READ_BUFFER: usize = 16 * 1024;

/// Large read buffers a shard keeps when no connection is using them (1 MiB).
const POOLED_READ_BUFFERS: usize = 4;

/// Decode errors logged per connection before the rest are only counted.
const LOGGED_ERRORS: u64 = 10;

/// Connections still being served on this shard, the shutdown latch, the shard's pool of
/// large read buffers, and the source's balancer (see [`balance`](crate::net::balance)).
pub(crate) struct Connections {
    open: Cell<usize>,
    pub(crate) stopping: Cell<bool>,
    changed: WaitList,
    /// The socket of each open connection, so that the drain timeout can cut it.
    fds: RefCell<Vec<RawFd>>,
    buffers: Rc<ReadBuffers>,
    /// Shared with the source's other shards when it spreads its connections over them.
    balancer: Option<Arc<Balancer>>,
}

impl Connections {
    /// The connections of one shard of a source; `balancer` spreads them over its shards.
    pub(crate) fn new(balancer: Option<Arc<Balancer>>) -> Self {
        Connections {
            open: Cell::new(0),
            stopping: Cell::new(false),
            changed: WaitList::default(),
            fds: RefCell::new(Vec::new()),
            buffers: ReadBuffers::new(READ_BUFFER, POOLED_READ_BUFFERS),
            balancer,
        }
    }

    /// Sets the stopping flag and wakes the accept loops.
    pub(crate) fn stop(&self) {
        self.stopping.set(true);
        self.changed.wake_all();
    }

    pub(crate) async fn until_stopping(&self) {
        std::future::poll_fn(|cx| {
            if self.stopping.get() {
                std::task::Poll::Ready(())
            } else {
                self.changed.register(cx.waker());
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Shuts down every connection still open (the drain timeout ran out): their reads end
    /// at once, after what was already received, and the clients see the connection close.
    /// Returns how many were cut.
    pub(crate) fn cut(&self) -> usize {
        let fds = self.fds.borrow();
        for &fd in fds.iter() {
            // SAFETY: an fd is in `fds` only while its connection task owns the open stream
            // (removed before the stream is dropped, on this same thread); shutdown changes the
            // socket's state and never closes or reuses the fd.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        fds.len()
    }

    /// Waits until every connection has been read to its end.
    pub(crate) async fn until_all_closed(&self) {
        std::future::poll_fn(|cx| {
            if self.open.get() == 0 {
                std::task::Poll::Ready(())
            } else {
                self.changed.register(cx.waker());
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// File descriptors the accept loops leave free for the rest of the engine: each shard's sink
/// connections (and a reconnection of each), the metrics file, a few spare. A source stops
/// accepting while fewer than this remain under `RLIMIT_NOFILE`, so running out of descriptors
/// never keeps a sink from connecting: outputs keep flowing for the connections already open.
pub(crate) fn fd_reserve(shards: usize, sinks: usize) -> usize {
    16 + shards * (sinks + 1) * 2
}

/// The first and the longest pause of an accept loop that cannot accept (no descriptors left).
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// An accept loop's state while it cannot accept: how long it waits next, and a log that says
/// so at most once a second (with the count of the lines it left out).
struct Backoff {
    delay: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            delay: BACKOFF_MIN,
            last_log: None,
            suppressed: 0,
        }
    }

    /// The pause to take now; each one doubles the next, up to [`BACKOFF_MAX`].
    fn next_delay(&mut self) -> Duration {
        let d = self.delay;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        d
    }

    /// Accepting works again.
    fn reset(&mut self) {
        self.delay = BACKOFF_MIN;
    }

    /// Logs `what` unless a line was logged less than a second ago (then only counts it).
    fn log(&mut self, core: &ShardCore, source: &SourceRuntime, what: impl FnOnce() -> String) {
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        let more = match self.suppressed {
            0 => String::new(),
            n => format!(" ({n} more since the last report)"),
        };
        tracing::warn!(
            "shard {}: source {}: {}{more}",
            core.index,
            source.name,
            what()
        );
        self.last_log = Some(now);
        self.suppressed = 0;
    }
}

/// The soft `RLIMIT_NOFILE`, or `None` when unlimited or unknown.
fn fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the valid, exclusively borrowed `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    // rlim_t is u64 on Linux's common targets, but not on every one.
    #[allow(clippy::unnecessary_cast)]
    Some(lim.rlim_cur as u64)
}

/// The lowest descriptor number free now (what the next socket would get), or `None` if none is.
fn lowest_free_fd(open_fd: RawFd) -> Option<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates `open_fd` (an fd the caller keeps open for the call)
    // onto the lowest free descriptor; the duplicate belongs to nobody else and is closed at
    // once, so no descriptor is leaked or closed twice.
    let fd = unsafe { libc::fcntl(open_fd, libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is the duplicate made just above, owned here and not used after.
    unsafe { libc::close(fd) };
    Some(fd)
}

/// True when descriptor `fd` being the lowest free one (as an accepted socket's is) leaves
/// fewer than `reserve` descriptors under `limit`.
fn near_fd_limit(fd: RawFd, limit: Option<u64>, reserve: usize) -> bool {
    limit.is_some_and(|lim| (fd.max(0) as u64).saturating_add(reserve as u64) >= lim)
}

/// Accept errors that mean "no descriptor or memory for a new socket now": retrying at once
/// only fails again, so the loop backs off.
fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accepts connections for one source until the shard stops, then takes the connections that
/// were already waiting in the kernel's queue (a client that connected just before the stop
/// has data in flight that must not be lost), then closes the listener.
///
/// Near the descriptor limit (fewer than `fd_reserve` left) or when accept fails for lack of
/// descriptors, it stops accepting and retries with exponential back-off (5 ms to 1 s), logging
/// at most one line a second: the connections already open keep being served, the sinks keep
/// the descriptors they need, and new clients wait in the listen queue until some close.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    listener_fd: RawFd,
    source: Rc<SourceRuntime>,
    core: Rc<ShardCore>,
    conns: Rc<Connections>,
    max_frame: usize,
    fd_reserve: usize,
) {
    let mut backoff = Backoff::new();
    let mut limit = fd_limit();
    // Connections other shards hand over are served by a task of their own: waiting for them
    // in this loop's `select` dropped glommio's accept future whenever one came, and a
    // dropped accept can lose the connection it was completing (2 of 500 in
    // connections::idle_connections_cost_little_memory).
    let inbox = conns.balancer.as_ref().map(|b| {
        glommio::spawn_local(serve_handed(
            b.clone(),
            source.clone(),
            core.clone(),
            conns.clone(),
            max_frame,
        ))
    });
    // Set while accepting is paused; the loop waits, then checks again before accepting.
    let mut paused = false;
    loop {
        if paused {
            let stopped = futures_lite::future::or(
                async {
                    glommio::timer::sleep(backoff.next_delay()).await;
                    false
                },
                async {
                    conns.until_stopping().await;
                    true
                },
            )
            .await;
            if stopped {
                break;
            }
            // The limit may have been raised meanwhile (`prlimit`).
            limit = fd_limit();
            match lowest_free_fd(listener_fd) {
                Some(fd) if !near_fd_limit(fd, limit, fd_reserve) => {}
                _ => continue,
            }
            paused = false;
            backoff.reset();
        }
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            conns.until_stopping().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                let fd = stream.as_raw_fd();
                if let Some(stream) = place(stream, &core, &conns) {
                    spawn_connection(stream, &source, &core, &conns, max_frame);
                }
                if near_fd_limit(fd, limit, fd_reserve) {
                    paused = true;
                    backoff.log(&core, &source, || {
                        format!(
                            "fewer than {fd_reserve} file descriptors left under the limit of {} \
                             (RLIMIT_NOFILE; raise it with `ulimit -n`): not accepting new \
                             connections until some close",
                            limit.unwrap_or(0)
                        )
                    });
                }
                // Let the new connection's task run (read what is there, and see the end of a
                // short-lived connection) before accepting the next one. Without this, accept
                // never waits while the kernel's queue holds connections, so a burst of
                // connections was all accepted before any was served: every one of them stayed
                // open (up to the listen backlog, 1024 per shard) even after its client had
                // closed it, each with its read buffer.
                futures_lite::future::yield_now().await;
            }
            Some(Err(e)) => {
                let exhausted = match &e {
                    glommio::GlommioError::IoError(io) => is_exhaustion(io),
                    _ => false,
                };
                // Any other failure (an aborted handshake, say) concerns one connection: log
                // it (rate-limited too) and go on after a short pause.
                paused = exhausted;
                backoff.log(&core, &source, || {
                    if exhausted {
                        format!("accept failed: {e}; not accepting new connections until descriptors are free (raise the limit with `ulimit -n`)")
                    } else {
                        format!("accept failed: {e}")
                    }
                });
                if !exhausted {
                    glommio::timer::sleep(BACKOFF_MIN).await;
                }
            }
        }
    }
    loop {
        // SAFETY: `listener_fd` is `listener`'s open, non-blocking socket, which `listener` keeps
        // open for the whole call;
        // accept4 only reads it, and a returned fd >= 0 is a new socket that nobody else owns.
        let fd = unsafe {
            libc::accept4(
                listener_fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            break;
        }
        // SAFETY: `fd` was just returned by accept4, so it is an open TCP socket we own.
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        if let Some(b) = &conns.balancer {
            // Counted here: the connections accepted at the stop stay on this shard.
            b.place_here(core.index);
        }
        spawn_connection(stream, &source, &core, &conns, max_frame);
    }
    // Serve what other shards handed over before this shard closed its inbox.
    if let (Some(b), Some(task)) = (&conns.balancer, inbox) {
        task.await;
        for socket in b.close(core.index) {
            spawn_connection(handed_stream(socket), &source, &core, &conns, max_frame);
        }
    }
}

/// Serves the connections other shards hand to this one, until the shard stops.
async fn serve_handed(
    balancer: Arc<Balancer>,
    source: Rc<SourceRuntime>,
    core: Rc<ShardCore>,
    conns: Rc<Connections>,
    max_frame: usize,
) {
    let waiter = Waiter::new(Some(&core.bell));
    loop {
        let handed = futures_lite::future::or(
            async { Some(balancer.handed(core.index, &waiter).await) },
            async {
                conns.until_stopping().await;
                None
            },
        )
        .await;
        let Some(sockets) = handed else { return };
        for socket in sockets {
            spawn_connection(handed_stream(socket), &source, &core, &conns, max_frame);
        }
    }
}

/// The stream of a socket that went through a balancer's inbox (handed over, or given back).
fn handed_stream(socket: OwnedFd) -> TcpStream {
    // SAFETY: a socket in a balancer's inbox is an open, connected TCP socket duplicated from
    // an accepted stream (see `place`), owned by `socket`; `into_raw_fd` gives that ownership
    // to the stream, which closes it.
    unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) }
}

/// Places a connection this shard accepted: returns it to serve here, or hands it to the
/// source's shard with the fewest connections (see [`balance`](crate::net::balance)).
fn place(stream: TcpStream, core: &ShardCore, conns: &Connections) -> Option<TcpStream> {
    let Some(b) = &conns.balancer else {
        return Some(stream);
    };
    let Placement::To(to) = b.place(core.index) else {
        return Some(stream);
    };
    // glommio's stream does not give its descriptor up: hand over a duplicate and let the
    // stream close the original (the socket stays open while a descriptor refers to it).
    // SAFETY: the stream keeps its fd open for this borrow.
    let dup = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned();
    let Ok(dup) = dup else {
        // No descriptor for the duplicate: serve it here after all.
        b.moved_back(to, core.index);
        return Some(stream);
    };
    drop(stream);
    match b.hand_over(core.index, to, dup) {
        Ok(()) => None,
        Err(back) => Some(handed_stream(back)),
    }
}

fn spawn_connection(
    stream: TcpStream,
    source: &Rc<SourceRuntime>,
    core: &Rc<ShardCore>,
    conns: &Rc<Connections>,
    max_frame: usize,
) {
    conns.open.set(conns.open.get() + 1);
    core.metrics.connection_from(&source.counters);
    let fd = stream.as_raw_fd();
    conns.fds.borrow_mut().push(fd);
    let (source, core, conns) = (source.clone(), core.clone(), conns.clone());
    glommio::spawn_local(async move {
        let frames = FrameReader::adaptive(SMALL_READ_BUFFER, conns.buffers.clone(), max_frame);
        match &source.connector {
            Some(c) => {
                crate::connect::connector_source::serve(stream, frames, &source, &core, c).await
            }
            None => serve(stream, frames, &source, &core).await,
        }
        // `serve` has dropped the stream: forget its fd before anything else can reuse it.
        conns.fds.borrow_mut().retain(|&f| f != fd);
        conns.open.set(conns.open.get() - 1);
        if let Some(b) = &conns.balancer {
            b.closed(core.index);
        }
        core.metrics.closed(&source.counters);
        conns.changed.wake_all();
    })
    .detach();
}

/// Reads what the socket has into `frames`. A read that has to wait means the socket is
/// drained: the connection is idle, so its reader gives back its buffer (or all of it but a
/// partial frame) while it waits. The next poll reads into whatever `spare` hands out then
/// (glommio waits for readiness, not into the buffer, so changing it between polls is fine),
/// which also makes the read safe to drop between polls.
pub(crate) async fn read_some(
    stream: &mut TcpStream,
    frames: &mut FrameReader,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        match std::pin::Pin::new(&mut *stream).poll_read(cx, frames.spare()) {
            std::task::Poll::Pending => {
                frames.idle();
                std::task::Poll::Pending
            }
            ready => ready,
        }
    })
    .await
}

/// One connection's frames as its reads deliver them: the stamp of the current read, the
/// event time reached, and the decode errors so far (the first `LOGGED_ERRORS` are logged).
pub(crate) struct FrameBatch<'a> {
    /// The stamp of every frame of the current read (its event time is the wall clock at
    /// ingest, unless the source reads one from the message).
    pub(crate) stamp: Stamp,
    /// The highest event time of the frames run so far.
    pub(crate) event_time: u64,
    errors: u64,
    peer: &'a str,
    source: &'a SourceRuntime,
    core: &'a ShardCore,
}

impl FrameBatch<'_> {
    /// Counts a payload the decoder rejected (it is skipped), and logs the first few.
    #[cold]
    fn decode_error(&mut self, e: &DecodeError) {
        self.core.metrics.decode_error_from(&self.source.counters);
        self.errors += 1;
        if self.errors <= LOGGED_ERRORS {
            tracing::warn!(
                "shard {}: source {} connection {}: decode error: {e}",
                self.core.index,
                self.source.name,
                self.peer
            );
        }
    }
}

/// Runs every whole frame buffered in `reader` through `frame` (decode, then the graph),
/// counting each as read; returns [`Frames::Paused`] after a frame that left a gauge
/// downstream over its limit, so the caller waits before it goes on.
/// [`FrameHandler::frames`] calls it with its own `frame`, which is inlined here.
#[inline(always)]
pub(crate) fn each_frame(
    reader: &mut FrameReader,
    batch: &mut FrameBatch<'_>,
    frame: impl Fn(&[u8], Stamp) -> Result<u64, DecodeError>,
) -> Result<Frames, FrameTooLarge> {
    let source = batch.source;
    // Frames are counted once per call, not per frame: two counters per frame were 6
    // instructions per message. Nothing waits in this loop, so no other task sees the count
    // behind; another thread may, by the frames of one call.
    let mut read = 0;
    let end = loop {
        let payload = match reader.next_frame() {
            Ok(Some(payload)) => payload,
            Ok(None) => break Ok(Frames::Drained),
            Err(e) => break Err(e),
        };
        read += 1;
        match frame(payload, batch.stamp) {
            Ok(t) => batch.event_time = batch.event_time.max(t),
            Err(e) => batch.decode_error(&e),
        }
        // Every 16th frame: the gauges are a load and a test each, per frame (3 for Market
        // Spread: the merge input's, the exchange's, the sink's), and a pause comes at most 15
        // frames later (they go into the spill or the sink buffer, which take them).
        if read % 16 == 0 && any_over(&source.gauges) {
            break Ok(Frames::Paused);
        }
    };
    batch.core.metrics.messages_in_from(&source.counters, read);
    end
}

/// Reads one connection to its end. A frame over `max_frame` ends the connection (the stream
/// cannot be resynchronised); a payload the decoder rejects is logged, counted and skipped.
async fn serve(
    mut stream: TcpStream,
    mut frames: FrameReader,
    source: &SourceRuntime,
    core: &ShardCore,
) {
    let peer = stream.peer_addr().map_or_else(
        |_| "unknown peer".to_string(),
        |a: SocketAddr| a.to_string(),
    );
    let metrics = &core.metrics;
    let slot = source.watermarks.open();
    let mut batch = FrameBatch {
        stamp: Stamp::default(),
        event_time: 0,
        errors: 0,
        peer: &peer,
        source,
        core,
    };
    let mut reads_since_yield = 0u32;
    loop {
        let n = match read_some(&mut stream, &mut frames).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(
                    "shard {}: source {} connection {peer}: read failed: {e}",
                    core.index,
                    source.name
                );
                break;
            }
        };
        frames.filled(n);
        // Every frame completed by this read was fully read now.
        let ingest = now_ns();
        batch.stamp = Stamp::at(ingest);
        loop {
            match source.on_frame.frames(&mut frames, &mut batch) {
                Ok(Frames::Drained) => break,
                Ok(Frames::Paused) => core.backpressure(&source.gauges).await,
                Err(e) => {
                    metrics.frame_error_from(&source.counters);
                    tracing::warn!(
                        "shard {}: source {} connection {peer}: {e}; closing the connection",
                        core.index,
                        source.name
                    );
                    core.flush();
                    source.watermarks.close(slot);
                    return;
                }
            }
        }
        core.flush();
        if batch.event_time > 0 {
            source.watermarks.advance(slot, batch.event_time, ingest);
        }
        // Let the shard's other tasks run after every read that brought a batch (a full
        // buffer, or 16 KiB), and after every 8th read in any case (`yield_after_batch` says
        // why). A read that finds data completes at once, so with a sender that keeps up this
        // task is always ready. `bench market-spread`, 2 shards, 16 M messages, 3 rounds
        // alternating with the doorbell answered in `flush`: 19.4 / 15.2 / 20.9 M msgs/s and
        // p99 1.1–2.8 ms; with glommio's `yield_if_needed` here: 13.2 / 12.3 / 15.6 M msgs/s,
        // p99 93–97 ms (perf: the two feeds ran one after the other, one shard at 100% and
        // the other at 35%). A short read is not followed by a yield: the socket is most
        // likely empty, and the next read waits (which yields) or sees the end. Yielding there
        // too let a churn of 5000 short connections (tests/connections.rs) hold more open at
        // once, each with its buffer: RSS grew 16–65 MB instead of 8–16 MB.
        reads_since_yield += 1;
        if frames.was_full() || n >= SMALL_READ_BUFFER || reads_since_yield == 8 {
            reads_since_yield = 0;
            yield_after_batch().await;
        }
    }
    let errors = batch.errors;
    source.watermarks.close(slot);
    if errors > LOGGED_ERRORS {
        tracing::warn!(
            "shard {}: source {} connection {peer}: {} more decode errors not shown",
            core.index,
            source.name,
            errors - LOGGED_ERRORS
        );
    }
    if frames.buffered() > 0 {
        metrics.truncated_from(&source.counters);
        tracing::warn!(
            "shard {}: source {} connection {peer}: closed in the middle of a frame ({} bytes of an incomplete frame dropped)",
            core.index,
            source.name,
            frames.buffered()
        );
    }
}
