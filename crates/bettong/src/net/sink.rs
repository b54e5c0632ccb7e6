//! The TCP sink of one shard: outputs are encoded into one buffer, which a writer task sends to
//! the sink's connection.
//!
//! Batching adapts to load without a timer: the writer is woken when the first output lands in
//! an empty buffer, but runs only after the tasks already ready (the sources and drains that
//! are still producing), then takes the whole buffer in one write. Under light load that is one
//! message per write, with no added latency; under heavy load the buffer fills up between writes.
//! Two buffers swap places, so encoding continues while a write is in flight.
//!
//! # Delivery: at-least-once across reconnects
//!
//! A successful `write` only means the kernel took the bytes. If the connection then drops
//! (the peer closes, resets, or goes away), whatever its TCP had not acknowledged is lost with
//! the socket. So after each write the writer asks the kernel how many bytes of the connection
//! are still unacknowledged (`ioctl(SIOCOUTQ)`) and keeps a copy of at least that tail of the
//! stream, cut at message boundaries ([`Unacked`]). When the connection fails, it reconnects and
//! sends that copy first, then carries on; messages sent again are counted (`resent`), since
//! the old peer may have received some of them.
//!
//! What this guarantees: every output is either acknowledged by the TCP of a sink connection
//! (counted in `out`), or still kept and resent, or — only when the stop's drain timeout runs
//! out — counted as `undelivered`. Nothing the peer's TCP never acknowledged is dropped
//! silently. What it cannot see: bytes the peer's TCP acknowledged but the peer application
//! never read (it closed with data in its receive buffer, which also makes its kernel send a
//! RST). Those are lost at the peer; only an application-level acknowledgement could tell.
//! A receiver may see a message twice after a reconnect (plain TCP sinks are at-least-once),
//! and the old connection may end in the middle of a message; a resend always starts at a
//! message boundary, so the new connection never starts with a torn message.
//!
//! The kept copy is at most what the kernel holds unacknowledged plus one batch; the
//! connection's send buffer is set to the sink buffer size, so that is bounded by about three
//! times `--sink-buffer`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::runtime::shard::{Gauge, Notify, WaitList};

/// What a sink writer did, for the engine's summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SinkReport {
    /// Outputs never acknowledged by a sink connection (the drain timeout ran out).
    pub(crate) undelivered: u64,
    /// Outputs sent again on a new connection after the previous one failed.
    pub(crate) resent_messages: u64,
    /// Bytes sent again on a new connection.
    pub(crate) resent_bytes: u64,
    /// Connections lost and made again.
    pub(crate) reconnects: u64,
}

/// One shard's outgoing buffer for one sink.
pub(crate) struct SinkBuffer {
    /// The outputs not yet taken by the writer.
    pending: RefCell<Pending>,
    limit: usize,
    pub(crate) gauge: Gauge,
    wake_writer: Notify,
    finishing: Cell<bool>,
    /// Set when the stop's drain timeout has run out: the writer gives up, and outputs appended
    /// from then on are only counted as undelivered.
    abandoned: Cell<bool>,
    /// The socket of the writer's current connection, so that [`abandon`](Self::abandon) can
    /// end a write that would wait forever.
    conn_fd: Cell<Option<RawFd>>,
    /// What the connection had not acknowledged when `abandon` cut it: final, since the cut
    /// also drops what the kernel still held.
    unacked_at_abandon: Cell<Option<u64>>,
    /// When the current connection was made, and how many connections in a row failed within
    /// a second of being made: a sink that accepts and drops at once is retried with back-off.
    connected_at: Cell<Option<std::time::Instant>>,
    flaps: Cell<u32>,
    report: Cell<SinkReport>,
    /// The sink's live counters on this shard, for the metrics endpoint.
    counters: Option<std::sync::Arc<crate::metrics::live::SinkCounters>>,
}

/// Outputs encoded and not yet taken by the writer, in one cell so that an append borrows
/// once.
struct Pending {
    buf: Vec<u8>,
    /// Where each message in `buf` ends, so that what is kept for a resend is cut at message
    /// boundaries.
    ends: Vec<usize>,
}

impl SinkBuffer {
    pub(crate) fn new(limit: usize) -> Self {
        SinkBuffer {
            pending: RefCell::new(Pending {
                buf: Vec::with_capacity(limit + limit / 4),
                ends: Vec::new(),
            }),
            limit,
            gauge: Gauge::default(),
            wake_writer: Notify::default(),
            finishing: Cell::new(false),
            abandoned: Cell::new(false),
            conn_fd: Cell::new(None),
            unacked_at_abandon: Cell::new(None),
            connected_at: Cell::new(None),
            flaps: Cell::new(0),
            report: Cell::new(SinkReport::default()),
            counters: None,
        }
    }

    /// Keeps `counters` up to date: outputs appended, delivery, the connection.
    pub(crate) fn counted(
        mut self,
        counters: std::sync::Arc<crate::metrics::live::SinkCounters>,
    ) -> Self {
        self.counters = Some(counters);
        self
    }

    /// Lets `encode` append to the buffer, then raises the gauge if the buffer is over its
    /// limit (the source that is producing will stop reading until the writer catches up).
    ///
    /// The sink's `messages` counter counts an output when the writer takes it (or counts it
    /// undelivered), not here: an add per batch instead of a counter update per message.
    /// Per message this is one borrow, the encoding, one end recorded and one branch to the
    /// cold part. With the counter and the two borrows of before, `bench passthrough
    /// --shards 1` took 8 instructions more per message (callgrind: 215.8 -> 207.9).
    #[inline]
    pub(crate) fn append(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        if self.abandoned.get() {
            self.count_taken(1);
            self.update_report(|r| r.undelivered += 1);
            return;
        }
        let mut pending = self.pending.borrow_mut();
        let was_empty = pending.buf.is_empty();
        encode(&mut pending.buf);
        let len = pending.buf.len();
        pending.ends.push(len);
        if len >= self.limit || was_empty {
            drop(pending);
            self.appended_first_or_over(was_empty, len);
        }
    }

    /// The rare outcomes of an append: the first output in an empty buffer wakes the writer;
    /// a buffer over its limit raises the gauge.
    #[cold]
    fn appended_first_or_over(&self, was_empty: bool, len: usize) {
        if len >= self.limit {
            self.gauge.set(true);
        }
        if was_empty {
            self.wake_writer.notify();
        }
    }

    /// Counts `n` outputs as appended, once the writer has taken them (or gives them up).
    fn count_taken(&self, n: usize) {
        if let Some(c) = &self.counters {
            c.messages.add(n as u64);
        }
    }

    /// Asks the writer to send what is left and end.
    pub(crate) fn finish(&self) {
        self.finishing.set(true);
        self.wake_writer.notify();
    }

    /// Gives up on the sink (the stop's drain timeout ran out): the writer counts what it has
    /// not delivered and ends, a write in progress is cut, and the sources waiting for room in
    /// this buffer are let go (their outputs are counted as undelivered from now on).
    pub(crate) fn abandon(&self, relief: &WaitList) {
        self.abandoned.set(true);
        if let Some(fd) = self.conn_fd.get() {
            // `conn_fd` holds the fd of the stream the writer owns and is cleared before that
            // stream is dropped (both on this thread), so the fd is open.
            self.unacked_at_abandon.set(cut_connection(fd));
        }
        self.wake_writer.notify();
        if self.gauge.is_over() {
            self.gauge.set(false);
            relief.wake_all();
        }
    }

    /// What the writer did (complete once it has ended).
    pub(crate) fn report(&self) -> SinkReport {
        self.report.get()
    }

    fn update_report(&self, f: impl FnOnce(&mut SinkReport)) {
        let mut r = self.report.get();
        f(&mut r);
        self.report.set(r);
        if let Some(c) = &self.counters {
            c.undelivered.set(r.undelivered);
            c.resent_messages.set(r.resent_messages);
            c.resent_bytes.set(r.resent_bytes);
            c.reconnects.set(r.reconnects);
        }
    }

    /// Sends the buffer to `addr` until [`finish`](Self::finish) is called and everything is
    /// written and acknowledged, or until [`abandon`](Self::abandon). Connects (and reconnects
    /// after an error) with back-off, so a sink that is not listening yet, or restarts, only
    /// delays output: while it is away the buffer fills to its limit and backpressure stops the
    /// sources. After a reconnect, the bytes the old connection had not had acknowledged are
    /// sent first (see the module's documentation).
    pub(crate) async fn writer(
        self: Rc<Self>,
        addr: SocketAddr,
        shard: usize,
        relief: Rc<WaitList>,
    ) {
        let mut out: Vec<u8> = Vec::with_capacity(self.limit + self.limit / 4);
        let mut out_ends: Vec<usize> = Vec::new();
        let mut conn: Option<TcpStream> = None;
        let mut kept = Unacked::default();
        // How long an idle writer waits before asking the kernel again about bytes not yet
        // acknowledged; doubles while nothing changes.
        let mut tick = MIN_TICK;
        // Connect at once rather than on the first output: the sink gets its connection
        // while descriptors are plentiful (a storm of clients near the open-file limit cannot
        // then keep outputs from flowing), and the first output pays no connect. Until the sink
        // listens, outputs wait in the buffer as before. The stop ends this first connect:
        // then, with nothing to send, the loop below ends at once; with outputs buffered, it
        // connects again, for as long as the drain allows.
        //
        // The stop is seen by the connect itself, which checks `finishing` after every wake-up.
        // It used to be a second future, raced with the connect, waiting on `wake_writer` too;
        // but `Notify` holds one pending wake-up, the race polls the connect first, and the
        // connect's back-off took the stop's wake-up and just retried, while the other future,
        // finding none, slept on without looking at `finishing` again: a stop with an
        // unreachable sink and nothing to send then waited for the whole drain timeout (30.0 s with `--drain-timeout 30s`, 2 or 4 shards; now 5 to
        // 16 ms, `tests/shutdown.rs`).
        self.reconnect(&mut conn, &mut kept, addr, shard, &|| self.finishing.get())
            .await;
        loop {
            if self.abandoned.get() {
                break;
            }
            if self.pending.borrow().buf.is_empty() {
                if kept.is_empty() {
                    if self.finishing.get() {
                        break;
                    }
                    self.wake_writer.notified().await;
                    // Let the tasks that are still producing run first, so this write carries
                    // everything they add.
                    glommio::executor().yield_now().await;
                    continue;
                }
                // Idle with output not acknowledged yet: look again shortly, or as soon as
                // more output comes. A connection found dead is made again and the kept
                // output resent.
                futures_lite::future::or(self.wake_writer.notified(), async {
                    glommio::timer::sleep(tick).await
                })
                .await;
                let before = kept.len();
                match conn.as_ref().map(|c| connection_state(c.as_raw_fd())) {
                    Some(Ok(unacked)) => kept.acked(unacked),
                    Some(Err(e)) => {
                        self.lost(&mut conn, &mut kept, addr, shard, &e);
                        if !self
                            .reconnect(&mut conn, &mut kept, addr, shard, &never)
                            .await
                        {
                            break;
                        }
                    }
                    None => {
                        if !self
                            .reconnect(&mut conn, &mut kept, addr, shard, &never)
                            .await
                        {
                            break;
                        }
                    }
                }
                tick = if kept.len() == before {
                    (tick * 2).min(MAX_TICK)
                } else {
                    MIN_TICK
                };
                continue;
            }
            {
                let mut pending = self.pending.borrow_mut();
                std::mem::swap(&mut pending.buf, &mut out);
                std::mem::swap(&mut pending.ends, &mut out_ends);
            }
            self.count_taken(out_ends.len());
            if self.gauge.is_over() {
                self.gauge.set(false);
                relief.wake_all();
            }
            if conn.is_none()
                && !self
                    .reconnect(&mut conn, &mut kept, addr, shard, &never)
                    .await
            {
                // Abandoned: `out` is counted as undelivered below.
                break;
            }
            let Some(stream) = conn.as_mut() else { break };
            let mut done = 0;
            let result = write_some(stream, &out, &mut done).await;
            match result.and_then(|()| unacked_bytes(stream.as_raw_fd())) {
                Ok(unacked) => kept.wrote(&mut out, &mut out_ends, unacked),
                Err(e) => {
                    // What the kernel took of this batch counts as sent; the whole batch is
                    // kept after what was kept before it, and the next connection resends
                    // all of it that this one did not have acknowledged.
                    kept.failed(&mut out, &mut out_ends, done);
                    self.lost(&mut conn, &mut kept, addr, shard, &e);
                }
            }
            out.clear();
            out_ends.clear();
            tick = MIN_TICK;
        }
        if self.abandoned.get() && conn.is_some() {
            if let Some(unacked) = self.unacked_at_abandon.get() {
                kept.acked(unacked);
            }
        }
        // Whatever is left here was never acknowledged by a sink connection.
        let never_taken = {
            let mut pending = self.pending.borrow_mut();
            pending.buf.clear();
            let n = pending.ends.len();
            pending.ends.clear();
            n
        };
        self.count_taken(never_taken);
        let left = kept.messages() + (out_ends.len() + never_taken) as u64;
        self.update_report(|r| r.undelivered += left);
        if let Some(mut c) = conn {
            self.conn_fd.set(None);
            if let Some(c) = &self.counters {
                c.connected.set(0);
            }
            if !self.abandoned.get() {
                let _ = c.flush().await;
                let _ = c.shutdown(std::net::Shutdown::Write).await;
            }
        }
    }

    /// The connection failed: learn what it had acknowledged, forget it, and rewind what is
    /// kept so that it is all sent again on the next connection.
    fn lost(
        &self,
        conn: &mut Option<TcpStream>,
        kept: &mut Unacked,
        addr: SocketAddr,
        shard: usize,
        e: &io::Error,
    ) {
        if let Some(c) = conn.take() {
            // The socket still knows how much of what it took was acknowledged before it
            // failed: trust that rather than resending everything. (After `abandon`, the
            // figure it took before cutting the connection.)
            let unacked = match self.unacked_at_abandon.get() {
                Some(u) if self.abandoned.get() => Ok(u),
                _ => unacked_bytes(c.as_raw_fd()),
            };
            if let Ok(unacked) = unacked {
                kept.acked(unacked);
            }
            self.conn_fd.set(None);
            if let Some(c) = &self.counters {
                c.connected.set(0);
            }
        }
        if self.abandoned.get() {
            // Cut by `abandon`: nothing more is sent, what is kept counts as undelivered.
            return;
        }
        let short = self
            .connected_at
            .take()
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        self.flaps.set(if short {
            self.flaps.get().saturating_add(1)
        } else {
            0
        });
        {
            tracing::warn!(
                "shard {shard}: sink {addr}: connection lost ({e}); reconnecting, {} message(s) ({} bytes) not acknowledged will be sent again",
                kept.messages(),
                kept.len()
            );
        }
        let (messages, bytes) = kept.rewind();
        self.update_report(|r| {
            r.resent_messages += messages;
            r.resent_bytes += bytes;
            r.reconnects += 1;
        });
    }

    /// Connects, then sends everything kept (what earlier connections had not acknowledged).
    /// False, not connected, once the sink is abandoned or `give_up()` holds.
    async fn reconnect(
        &self,
        conn: &mut Option<TcpStream>,
        kept: &mut Unacked,
        addr: SocketAddr,
        shard: usize,
        give_up: &dyn Fn() -> bool,
    ) -> bool {
        loop {
            let Some(mut stream) = self.connect(addr, shard, give_up).await else {
                return false;
            };
            self.conn_fd.set(Some(stream.as_raw_fd()));
            let mut result = Ok(());
            if !kept.is_empty() {
                let pending = kept.unsent();
                let mut done = 0;
                result = write_some(&mut stream, &pending, &mut done).await;
                kept.sent(done as u64);
                if result.is_ok() {
                    result = unacked_bytes(stream.as_raw_fd()).map(|u| kept.acked(u));
                }
            }
            *conn = Some(stream);
            match result {
                Ok(()) => return true,
                Err(e) => {
                    self.lost(conn, kept, addr, shard, &e);
                    if self.abandoned.get() || give_up() {
                        return false;
                    }
                }
            }
        }
    }
}

impl SinkBuffer {
    /// Until the sink is abandoned or `give_up()` holds. While the writer connects, this is its
    /// only wait on `wake_writer`, a `Notify` with one waker and one pending wake-up: so the
    /// conditions are checked before each wait and after every wake-up, whatever it was for
    /// (new output wakes it too). A wake-up consumed by an earlier wait is not lost either:
    /// `finish` and `abandon` set their flag before they notify.
    async fn stopped(&self, give_up: &dyn Fn() -> bool) {
        while !(self.abandoned.get() || give_up()) {
            self.wake_writer.notified().await;
        }
    }

    /// Connects to the sink, retrying with back-off (10 ms doubling to 1 s) until it listens;
    /// `None` once the sink is abandoned or `give_up()` holds, which also ends an attempt in
    /// progress (a connect to an address that drops it can take minutes to fail). The send
    /// buffer is set to the sink buffer's size, which bounds what the kernel can hold
    /// unacknowledged, and so what is kept for a resend.
    async fn connect(
        &self,
        addr: SocketAddr,
        shard: usize,
        give_up: &dyn Fn() -> bool,
    ) -> Option<TcpStream> {
        let mut delay = Duration::from_millis(10);
        let mut reported = false;
        if self.flaps.get() > 0 {
            // The last connection failed soon after it was made: wait before the next one.
            let wait = Duration::from_millis(10 << self.flaps.get().min(7));
            futures_lite::future::or(self.stopped(give_up), async {
                glommio::timer::sleep(wait).await
            })
            .await;
        }
        loop {
            if self.abandoned.get() || give_up() {
                return None;
            }
            // The attempt is dropped (which cancels it) when the writer is to stop.
            let attempt =
                futures_lite::future::or(async { Some(TcpStream::connect(addr).await) }, async {
                    self.stopped(give_up).await;
                    None
                });
            match attempt.await? {
                Ok(s) => {
                    if let Err(e) = s.set_nodelay(true) {
                        tracing::warn!("shard {shard}: sink {addr}: cannot set TCP_NODELAY: {e}");
                    }
                    let size = libc::c_int::try_from(self.limit).unwrap_or(libc::c_int::MAX);
                    // SAFETY: the fd is the open socket `s` owns; SO_SNDBUF reads one c_int
                    // from the pointer, which points to `size`.
                    let rc = unsafe {
                        libc::setsockopt(
                            s.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_SNDBUF,
                            &size as *const libc::c_int as *const libc::c_void,
                            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                        )
                    };
                    if rc < 0 {
                        tracing::warn!(
                            "shard {shard}: sink {addr}: cannot set SO_SNDBUF: {}",
                            io::Error::last_os_error()
                        );
                    }
                    if reported {
                        tracing::info!("shard {shard}: sink {addr}: connected");
                    }
                    self.connected_at.set(Some(std::time::Instant::now()));
                    if let Some(c) = &self.counters {
                        c.connected.set(1);
                    }
                    return Some(s);
                }
                Err(e) => {
                    if !reported {
                        tracing::warn!("shard {shard}: sink {addr}: {}; retrying", describe(&e));
                        reported = true;
                    }
                    // Ended early by `abandon`, or by `give_up` (new output changes nothing
                    // here, and does not end it).
                    futures_lite::future::or(self.stopped(give_up), async {
                        glommio::timer::sleep(delay).await
                    })
                    .await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

fn describe(e: &glommio::GlommioError<()>) -> String {
    match e {
        glommio::GlommioError::IoError(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            "not listening yet (connection refused)".to_string()
        }
        other => other.to_string(),
    }
}

/// For [`SinkBuffer::reconnect`]: give up only when the sink is abandoned.
fn never() -> bool {
    false
}

/// The first and the longest wait of an idle writer between looks at unacknowledged bytes.
const MIN_TICK: Duration = Duration::from_millis(1);
const MAX_TICK: Duration = Duration::from_millis(64);

/// Writes `bytes` from `*done` on, counting in `*done` what the kernel took, so that after an
/// error the caller knows how much was handed over.
async fn write_some(stream: &mut TcpStream, bytes: &[u8], done: &mut usize) -> io::Result<()> {
    while *done < bytes.len() {
        match stream.write(&bytes[*done..]).await {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Bytes the socket has taken but its peer has not acknowledged (`SIOCOUTQ`, also valid on a
/// socket that a reset has closed).
fn unacked_bytes(fd: RawFd) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: `fd` is an open socket owned by the caller's stream; SIOCOUTQ (TIOCOUTQ) writes
    // one c_int to the pointer, which points to `n`.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as u64)
}

/// Cuts a sink connection for good: a pending write fails at once, and closing the socket will
/// reset the connection and drop what the kernel still holds (linger 0), so nothing counted
/// undelivered reaches the peer later. Returns the bytes it had not had acknowledged.
fn cut_connection(fd: RawFd) -> Option<u64> {
    let was_open = matches!(tcp_state(fd), Ok(state) if state != TCP_CLOSE);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the caller guarantees `fd` is an open socket. SO_LINGER reads one `linger` from
    // the pointer, which points to `linger`; shutdown only changes the socket's state.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
    // Measured after the shutdown, since the kernel takes nothing more from then on. On an open
    // connection the shutdown queued a FIN, which takes one sequence number that SIOCOUTQ
    // counts until it is acknowledged (and when it is, everything before it was too).
    let unacked = unacked_bytes(fd).ok()?;
    Some(if was_open {
        unacked.saturating_sub(1)
    } else {
        unacked
    })
}

/// Linux's TCP_CLOSE state: the connection is gone (reset, or timed out).
const TCP_CLOSE: u8 = 7;

/// The connection's TCP state (`tcpi_state`).
fn tcp_state(fd: RawFd) -> io::Result<u8> {
    // SAFETY: tcp_info is plain data, valid when zeroed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket owned by the caller's stream; getsockopt writes at most
    // `len` bytes into `info` and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_state)
}

/// Unacknowledged bytes of a connection that is still up, or an error once it is gone (the
/// peer reset it, or its close made this side's next segment draw a reset).
fn connection_state(fd: RawFd) -> io::Result<u64> {
    if tcp_state(fd)? == TCP_CLOSE {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "the connection was reset",
        ));
    }
    unacked_bytes(fd)
}

/// Output the kernel took but the peer has not acknowledged yet (plus, after a failure, output
/// not yet sent at all), as whole messages, with positions counted in bytes since the writer
/// started.
///
/// The writer's batches are kept whole: a written batch's buffers move in here and emptied
/// ones move back out for the next batch, so keeping output costs no copy. (Copying each batch
/// into one byte queue was 40 of the 346 instructions per message of `bench passthrough`, 1
/// shard, plus its `memcpy`.)
#[derive(Default)]
struct Unacked {
    /// The kept batches, oldest first; each keeps the messages from its `first` on.
    batches: VecDeque<KeptBatch>,
    /// Kept bytes and messages, over all batches.
    bytes: usize,
    messages: u64,
    /// Position up to which the current connection (or, after [`rewind`](Self::rewind), the
    /// next one) has taken the stream.
    sent: u64,
    /// Emptied buffers of batches no longer kept, for the writer's next batches.
    spare: Vec<(Vec<u8>, Vec<usize>)>,
}

/// One written batch: its bytes from position `start`, the end of each of its messages
/// (offsets into `bytes`), and the first message still kept.
struct KeptBatch {
    start: u64,
    bytes: Vec<u8>,
    ends: Vec<usize>,
    first: usize,
}

impl KeptBatch {
    /// Offset in `bytes` of the first kept message.
    fn from(&self) -> usize {
        match self.first {
            0 => 0,
            i => self.ends[i - 1],
        }
    }
}

/// Spare buffer pairs kept for reuse: one batch in flight and one being filled is the steady
/// state.
const SPARE_BATCHES: usize = 2;

impl Unacked {
    fn is_empty(&self) -> bool {
        self.messages == 0
    }

    fn len(&self) -> usize {
        self.bytes
    }

    fn messages(&self) -> u64 {
        self.messages
    }

    /// Position of the first kept byte (`sent` when nothing is kept).
    fn base(&self) -> u64 {
        self.batches
            .front()
            .map_or(self.sent, |b| b.start + b.from() as u64)
    }

    /// The connection has `unacked` bytes not acknowledged: forgets the messages before them.
    fn acked(&mut self, unacked: u64) {
        let acked = self.sent.saturating_sub(unacked);
        while let Some(b) = self.batches.front_mut() {
            // A search, not a walk: this runs after every write, over thousands of messages
            // (walking them was 16 instructions per message of `bench passthrough`).
            let done = b.ends[b.first..].partition_point(|&e| b.start + e as u64 <= acked);
            if done > 0 {
                let from = b.from();
                b.first += done;
                self.bytes -= b.from() - from;
                self.messages -= done as u64;
            }
            if b.first < b.ends.len() {
                return;
            }
            if let Some(done) = self.batches.pop_front() {
                self.recycle(done.bytes, done.ends);
            }
        }
    }

    /// Keeps emptied buffers for [`keep`](Self::keep) to hand out, up to [`SPARE_BATCHES`].
    fn recycle(&mut self, mut bytes: Vec<u8>, mut ends: Vec<usize>) {
        if self.spare.len() < SPARE_BATCHES {
            bytes.clear();
            ends.clear();
            self.spare.push((bytes, ends));
        }
    }

    /// Keeps the messages `ends[first..]` of `batch`, which starts at position `start`, and
    /// leaves the writer empty buffers in its place.
    fn keep(&mut self, start: u64, batch: &mut Vec<u8>, ends: &mut Vec<usize>, first: usize) {
        let (bytes, spare_ends) = self.spare.pop().unwrap_or_else(|| {
            (
                Vec::with_capacity(batch.capacity()),
                Vec::with_capacity(ends.capacity()),
            )
        });
        let kept = KeptBatch {
            start,
            bytes: std::mem::replace(batch, bytes),
            ends: std::mem::replace(ends, spare_ends),
            first,
        };
        self.bytes += kept.bytes.len() - kept.from();
        self.messages += (kept.ends.len() - first) as u64;
        self.batches.push_back(kept);
    }

    /// `batch` (messages ending at `batch_ends`) was written whole and the connection now has
    /// `unacked` bytes not acknowledged: keeps the messages of the batch they cover. Leaves
    /// `batch` and `batch_ends` empty.
    fn wrote(&mut self, batch: &mut Vec<u8>, batch_ends: &mut Vec<usize>, unacked: u64) {
        let start = self.sent;
        self.sent += batch.len() as u64;
        self.acked(unacked);
        let acked = self.sent.saturating_sub(unacked);
        let first = if self.is_empty() {
            // Everything before the batch is acknowledged: keep from the first message of the
            // batch that is not.
            batch_ends.partition_point(|&e| start + e as u64 <= acked)
        } else {
            0
        };
        if first == batch_ends.len() {
            batch.clear();
            batch_ends.clear();
            return;
        }
        self.keep(start, batch, batch_ends, first);
    }

    /// Writing `batch` failed after the kernel took `done` bytes of it: keeps all of it, after
    /// what is kept already (which the connection had all taken). Leaves `batch` and
    /// `batch_ends` empty.
    fn failed(&mut self, batch: &mut Vec<u8>, batch_ends: &mut Vec<usize>, done: usize) {
        let start = self.sent;
        self.sent += done as u64;
        if batch_ends.is_empty() {
            batch.clear();
            return;
        }
        self.keep(start, batch, batch_ends, 0);
    }

    /// The connection is gone: everything kept is to be sent again from its start. Returns
    /// the messages and bytes that the old connection had taken (they may arrive twice).
    fn rewind(&mut self) -> (u64, u64) {
        let base = self.base();
        let taken = self.sent.saturating_sub(base);
        let mut messages = 0;
        'batches: for b in &self.batches {
            let mut start = b.start + b.from() as u64;
            for &end in &b.ends[b.first..] {
                if start >= self.sent {
                    break 'batches;
                }
                messages += 1;
                start = b.start + end as u64;
            }
        }
        self.sent = base;
        (messages, taken)
    }

    /// The kept bytes the current connection has not taken yet, in one buffer (a reconnect
    /// sends them; rare, so the copy does not matter).
    fn unsent(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes);
        for b in &self.batches {
            let from = (b.start + b.from() as u64).max(self.sent);
            let end = b.start + b.bytes.len() as u64;
            if from < end {
                out.extend_from_slice(&b.bytes[(from - b.start) as usize..]);
            }
        }
        out
    }

    /// The current connection took `n` more of the kept bytes.
    fn sent(&mut self, n: u64) {
        self.sent += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept_bytes(k: &mut Unacked) -> Vec<u8> {
        let sent = k.sent;
        k.sent = 0;
        let all = k.unsent();
        k.sent = sent;
        all
    }

    /// `Unacked::wrote` with buffers of its own, checking that it leaves them empty.
    fn wrote(k: &mut Unacked, bytes: &[u8], ends: &[usize], unacked: u64) {
        let (mut b, mut e) = (bytes.to_vec(), ends.to_vec());
        k.wrote(&mut b, &mut e, unacked);
        assert!(b.is_empty() && e.is_empty());
    }

    /// `Unacked::failed` likewise.
    fn failed(k: &mut Unacked, bytes: &[u8], ends: &[usize], done: usize) {
        let (mut b, mut e) = (bytes.to_vec(), ends.to_vec());
        k.failed(&mut b, &mut e, done);
        assert!(b.is_empty() && e.is_empty());
    }

    /// Messages "aa", "bbb", "c" in one batch: only the unacknowledged tail is kept, from the
    /// start of the first message it touches.
    #[test]
    fn keeps_whole_messages_covering_the_unacknowledged_tail() {
        let mut k = Unacked::default();
        wrote(&mut k, b"aabbbc", &[2, 5, 6], 0);
        assert!(k.is_empty());
        wrote(&mut k, b"aabbbc", &[2, 5, 6], 2); // "c" and the last byte of "bbb" unacked
        assert_eq!(kept_bytes(&mut k), b"bbbc");
        assert_eq!(k.messages(), 2);
        wrote(&mut k, b"dd", &[2], 3); // "c" and "dd" unacked
        assert_eq!(kept_bytes(&mut k), b"cdd");
        k.acked(0);
        assert!(k.is_empty() && k.bytes == 0 && k.batches.is_empty());
    }

    /// A failed connection: what it acknowledged is forgotten, the rest (including a batch it
    /// took only part of) is resent from a message boundary, and counted.
    #[test]
    fn rewinds_after_a_failure() {
        let mut k = Unacked::default();
        wrote(&mut k, b"aabbb", &[2, 5], 5);
        failed(&mut k, b"ccdd", &[2, 4], 1); // the kernel took "c"
        k.acked(6); // of the 6 bytes taken, none acknowledged
        assert_eq!(k.rewind(), (3, 6)); // "aa", "bbb", "cc" were (partly) taken
        assert_eq!(kept_bytes(&mut k), b"aabbbccdd");
        assert_eq!(k.unsent(), b"aabbbccdd");
        k.sent(9);
        k.acked(4); // the new connection acknowledged "aabbb"
        assert_eq!(kept_bytes(&mut k), b"ccdd");
        wrote(&mut k, b"e", &[1], 0);
        assert!(k.is_empty());
    }

    /// Batches move in whole (no copy) and their buffers come back, emptied, once acknowledged;
    /// acknowledgements, a rewind and a resend work across batch boundaries.
    #[test]
    fn batches_are_kept_whole_and_their_buffers_reused() {
        let mut k = Unacked::default();
        let (mut b, mut e) = (b"aabbb".to_vec(), vec![2, 5]);
        let first = b.as_ptr();
        k.wrote(&mut b, &mut e, 5); // nothing acknowledged yet
        assert_eq!(k.batches[0].bytes.as_ptr(), first, "moved, not copied");
        assert!(
            b.is_empty() && b.capacity() >= 5,
            "an empty buffer to fill next"
        );
        b.extend_from_slice(b"cccd");
        e.extend([3, 4]);
        k.wrote(&mut b, &mut e, 6); // "aa" acknowledged, "bbb" only in part
        assert_eq!((k.messages(), k.len()), (3, 7));
        assert_eq!(kept_bytes(&mut k), b"bbbcccd");
        assert_eq!(k.rewind(), (3, 7));
        assert_eq!(k.unsent(), b"bbbcccd");
        k.sent(4); // the new connection took "bbbc" so far
        assert_eq!(k.unsent(), b"ccd");
        k.sent(3);
        k.acked(1); // all but "d"
        assert_eq!((k.messages(), kept_bytes(&mut k)), (1, b"d".to_vec()));
        assert_eq!(k.spare.len(), 1, "the first batch's buffers came back");
        k.acked(0);
        assert!(k.is_empty() && k.batches.is_empty());
        assert_eq!(k.spare.len(), SPARE_BATCHES);
        assert_eq!(k.spare[0].0.as_ptr(), first);
        // The next kept batch hands back a spare buffer instead of allocating.
        let (mut b, mut e) = (b"ee".to_vec(), vec![2]);
        k.wrote(&mut b, &mut e, 2);
        assert_eq!((k.spare.len(), kept_bytes(&mut k)), (1, b"ee".to_vec()));
        assert!(b.is_empty() && b.capacity() > 0);
    }

    /// A failure after the peer acknowledged part of what was kept: only the rest is resent.
    #[test]
    fn resends_only_what_was_not_acknowledged() {
        let mut k = Unacked::default();
        wrote(&mut k, b"aabbbcc", &[2, 5, 7], 7);
        k.acked(2); // later: all but "cc" acknowledged
        assert_eq!(k.rewind(), (1, 2));
        assert_eq!(k.unsent(), b"cc");
    }
}
