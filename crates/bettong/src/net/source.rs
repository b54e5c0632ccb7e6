//! The TCP source of one shard: its listener (one per shard on the same port, SO_REUSEPORT,
//! so the kernel spreads connections over the cores) and one task per connection that reads
//! frames and runs them through the graph.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::rc::Rc;

use futures_lite::AsyncRead;
use glommio::net::{TcpListener, TcpStream};

use crate::codec::{FrameReader, ReadBuffers};
use crate::metrics::now_ns;
use crate::runtime::shard::{ShardCore, SourceRuntime, WaitList};

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

/// Connections still being served on this shard, the shutdown latch, and the shard's pool of
/// large read buffers.
pub(crate) struct Connections {
    open: Cell<usize>,
    pub(crate) stopping: Cell<bool>,
    changed: WaitList,
    buffers: Rc<ReadBuffers>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            open: Cell::new(0),
            stopping: Cell::new(false),
            changed: WaitList::default(),
            buffers: ReadBuffers::new(READ_BUFFER, POOLED_READ_BUFFERS),
        }
    }
}

impl Connections {
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

    /// Registers a waker to be woken when `stop` is called (for tasks that poll for it).
    pub(crate) fn on_stop(&self, waker: &std::task::Waker) {
        self.changed.register(waker);
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

/// Accepts connections for one source until the shard stops, then takes the connections that
/// were already waiting in the kernel's queue (a client that connected just before the stop
/// has data in flight that must not be lost), then closes the listener.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    listener_fd: RawFd,
    source: Rc<SourceRuntime>,
    core: Rc<ShardCore>,
    conns: Rc<Connections>,
    max_frame: usize,
) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            conns.until_stopping().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                spawn_connection(stream, &source, &core, &conns, max_frame);
                // Let the new connection's task run (read what is there, and see the end of a
                // short-lived connection) before accepting the next one. Without this, accept
                // never waits while the kernel's queue holds connections, so a burst of
                // connections was all accepted before any was served: every one of them stayed
                // open (up to the listen backlog, 1024 per shard) even after its client had
                // closed it, each with its read buffer.
                futures_lite::future::yield_now().await;
            }
            Some(Err(e)) => {
                eprintln!(
                    "bettong: shard {}: source {}: accept failed: {e}",
                    core.index, source.name
                );
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
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
        spawn_connection(stream, &source, &core, &conns, max_frame);
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
    core.metrics.connection();
    let (source, core, conns) = (source.clone(), core.clone(), conns.clone());
    glommio::spawn_local(async move {
        let frames = FrameReader::adaptive(SMALL_READ_BUFFER, conns.buffers.clone(), max_frame);
        serve(stream, frames, &source, &core).await;
        conns.open.set(conns.open.get() - 1);
        conns.changed.wake_all();
    })
    .detach();
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
    let mut errors = 0u64;
    loop {
        // A read that has to wait means the socket is drained: the connection is idle, so its
        // reader gives back its buffer (or all of it but a partial frame) while it waits. The
        // next poll reads into whatever `spare` hands out then (glommio waits for readiness,
        // not into the buffer, so changing it between polls is fine).
        let read = std::future::poll_fn(|cx| {
            match std::pin::Pin::new(&mut stream).poll_read(cx, frames.spare()) {
                std::task::Poll::Pending => {
                    frames.idle();
                    std::task::Poll::Pending
                }
                ready => ready,
            }
        })
        .await;
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                eprintln!(
                    "bettong: shard {}: source {} connection {peer}: read failed: {e}",
                    core.index, source.name
                );
                break;
            }
        };
        frames.filled(n);
        // Every frame completed by this read was fully read now.
        let ingest = now_ns();
        loop {
            match frames.next_frame() {
                Ok(Some(payload)) => {
                    metrics.message_in();
                    if let Err(e) = (source.on_frame)(payload, ingest) {
                        metrics.decode_error();
                        errors += 1;
                        if errors <= LOGGED_ERRORS {
                            eprintln!(
                                "bettong: shard {}: source {} connection {peer}: decode error: {e}",
                                core.index, source.name
                            );
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    metrics.frame_error();
                    eprintln!(
                        "bettong: shard {}: source {} connection {peer}: {e}; closing the connection",
                        core.index, source.name
                    );
                    core.flush();
                    return;
                }
            }
            core.backpressure(&source.gauges).await;
        }
        core.flush();
        glommio::yield_if_needed().await;
    }
    if errors > LOGGED_ERRORS {
        eprintln!(
            "bettong: shard {}: source {} connection {peer}: {} more decode errors not shown",
            core.index,
            source.name,
            errors - LOGGED_ERRORS
        );
    }
    if frames.buffered() > 0 {
        metrics.truncated();
        eprintln!(
            "bettong: shard {}: source {} connection {peer}: closed in the middle of a frame ({} bytes of an incomplete frame dropped)",
            core.index,
            source.name,
            frames.buffered()
        );
    }
}
