//! The TCP source of one shard: its listener (one per shard on the same port, SO_REUSEPORT,
//! so the kernel spreads connections over the cores) and one task per connection that reads
//! frames and runs them through the graph.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;

use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};

use crate::codec::FrameReader;
use crate::metrics::now_ns;
use crate::runtime::shard::{ShardCore, SourceRuntime, WaitList};

/// Bytes read per `read` call at most (plus room for one `--max-frame` frame): large enough
/// that a busy connection delivers hundreds of small frames per system call.
const READ_BUFFER: usize = 256 * 1024;

/// Decode errors logged per connection before the rest are only counted.
const LOGGED_ERRORS: u64 = 10;

/// Connections still being served on this shard, and the shutdown latch.
#[derive(Default)]
pub(crate) struct Connections {
    open: Cell<usize>,
    pub(crate) stopping: Cell<bool>,
    changed: WaitList,
    /// The socket of each open connection, so that the drain timeout can cut it.
    fds: RefCell<Vec<RawFd>>,
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
            Some(Ok(stream)) => spawn_connection(stream, &source, &core, &conns, max_frame),
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
    let fd = stream.as_raw_fd();
    conns.fds.borrow_mut().push(fd);
    let (source, core, conns) = (source.clone(), core.clone(), conns.clone());
    glommio::spawn_local(async move {
        serve(stream, &source, &core, max_frame).await;
        // `serve` has dropped the stream: forget its fd before anything else can reuse it.
        conns.fds.borrow_mut().retain(|&f| f != fd);
        conns.open.set(conns.open.get() - 1);
        conns.changed.wake_all();
    })
    .detach();
}

/// Reads one connection to its end. A frame over `max_frame` ends the connection (the stream
/// cannot be resynchronised); a payload the decoder rejects is logged, counted and skipped.
async fn serve(mut stream: TcpStream, source: &SourceRuntime, core: &ShardCore, max_frame: usize) {
    let peer = stream.peer_addr().map_or_else(
        |_| "unknown peer".to_string(),
        |a: SocketAddr| a.to_string(),
    );
    let metrics = &core.metrics;
    let mut frames = FrameReader::new(READ_BUFFER, max_frame);
    let mut errors = 0u64;
    loop {
        let n = match stream.read(frames.spare()).await {
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
