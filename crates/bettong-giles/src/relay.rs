//! The raw baseline for `bench relay`: frames forwarded with plain threads and blocking
//! sockets, no engine. It is what "as fast as loopback TCP allows" looks like on this machine,
//! so engine figures can be read as a ratio of it.
//!
//! The relay listens on a TCP port (port 0 picks a free one). Each accepted connection gets its
//! own thread and its **own outgoing connection** to the target. One outgoing connection per
//! input, rather than one shared by all, because that is the fastest thing threads and sockets
//! can do: no lock, no hand-off between threads, every thread a straight read → write loop on
//! its own pair of sockets. (With a single input connection, as `bench relay` uses by default,
//! the two designs are the same.) It also matches the engine's shape, where every shard writes
//! to its own sink connection.
//!
//! Each thread reads up to 256 KiB at a time (the engine's source reads the same amount),
//! walks the `[u32 BE len]` headers to find where the last whole frame ends, writes all the
//! whole frames with one `write_all`, and keeps the incomplete tail for the next read. So the
//! output is frame-aligned, frames are counted, and there is no syscall and no allocation per
//! frame: one read and one write per chunk, as a fair baseline must be.
//!
//! ```
//! use bettong_giles::relay::Relay;
//! use std::io::{Read, Write};
//!
//! let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! let relay = Relay::start(target.local_addr().unwrap()).unwrap();
//! let mut client = std::net::TcpStream::connect(relay.local_addr()).unwrap();
//! client.write_all(b"\0\0\0\x02hi\0\0\0\x01!").unwrap();
//! drop(client); // the input ends, so the relay closes its outgoing connection
//! let (mut out, _) = target.accept().unwrap();
//! let mut got = Vec::new();
//! out.read_to_end(&mut got).unwrap();
//! assert_eq!(got, b"\0\0\0\x02hi\0\0\0\x01!");
//! relay.stop();
//! let report = relay.join().unwrap();
//! assert_eq!((report.frames_in, report.frames_out), (2, 2));
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bettong::codec::scan_frames;

/// Bytes asked of the kernel per read: the engine source's read size, so the two compare.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Largest frame accepted: the receiver's default `--max-frame` (16 MiB). A larger header
/// closes that connection, as it would at the receiver anyway.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// How long to wait for the target to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a relay did, returned by [`Relay::join`].
///
/// ```
/// let r = bettong_giles::relay::RelayReport::default();
/// assert_eq!(r.frames_out, 0);
/// ```
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RelayReport {
    /// Whole frames read from input connections.
    pub frames_in: u64,
    /// Frames written to outgoing connections.
    pub frames_out: u64,
    /// Input connections accepted.
    pub connections: u64,
    /// Connections that ended on an error (target unreachable or gone, an oversized frame, a
    /// failed read, input cut in the middle of a frame).
    pub errors: u64,
}

/// Counters every connection thread updates, once per chunk (not per frame).
#[derive(Default)]
struct Shared {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    connections: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
    /// The local address of the connection [`Relay::stop`] makes to wake the accept loop, so
    /// that the loop tells it from a real client's.
    waker: Mutex<Option<SocketAddr>>,
}

/// A running relay. Start it with [`Relay::start`], point senders at
/// [`local_addr`](Relay::local_addr), then [`stop`](Relay::stop) and [`join`](Relay::join).
pub struct Relay {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl Relay {
    /// Listens on a free port of 127.0.0.1 and forwards every accepted connection's frames to
    /// `target` (each on a new connection made when the input connection is accepted).
    pub fn start(target: SocketAddr) -> Result<Relay, String> {
        Relay::listen(([127, 0, 0, 1], 0).into(), target)
    }

    /// As [`start`](Relay::start), listening on `addr`.
    pub fn listen(addr: SocketAddr, target: SocketAddr) -> Result<Relay, String> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| format!("relay: unable to listen on {addr}: {e}"))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| format!("relay: reading the bound address: {e}"))?;
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("bettong-relay-accept".to_string())
            .spawn(move || accept_loop(listener, target, &s))
            .map_err(|e| format!("relay: cannot start the accept thread: {e}"))?;
        Ok(Relay {
            local_addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address senders connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Frames written to outgoing connections so far (read while running).
    pub fn forwarded(&self) -> u64 {
        self.shared.frames_out.load(Ordering::Relaxed)
    }

    /// Stops accepting. Every connection already made (including those still waiting in the
    /// kernel's queue) is still served to its end; [`join`](Relay::join) waits for that.
    pub fn stop(&self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // A blocking accept() has no timeout: wake it with a connection of our own, which queues
        // behind every real one, so none of those is left unserved. The lock is held until the
        // waker's address is recorded: the accept loop, seeing the stop flag, takes the lock
        // before it compares, so it cannot mistake the waker for a client.
        let mut waker = lock(&self.shared.waker);
        match TcpStream::connect(self.local_addr) {
            Ok(s) => *waker = s.local_addr().ok(),
            Err(e) => tracing::warn!("relay: cannot wake the accept loop: {e}"),
        }
    }

    /// Waits until the relay has stopped and every connection has ended, and returns the
    /// counts. Call [`stop`](Relay::stop) first, or this waits forever.
    pub fn join(mut self) -> Result<RelayReport, String> {
        let threads = self
            .acceptor
            .take()
            .map(|a| a.join().map_err(|_| "relay: the accept thread panicked"))
            .transpose()?
            .unwrap_or_default();
        for t in threads {
            t.join()
                .map_err(|_| "relay: a connection thread panicked".to_string())?;
        }
        let s = &self.shared;
        Ok(RelayReport {
            frames_in: s.frames_in.load(Ordering::SeqCst),
            frames_out: s.frames_out.load(Ordering::SeqCst),
            connections: s.connections.load(Ordering::SeqCst),
            errors: s.errors.load(Ordering::SeqCst),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // A relay dropped without join still stops accepting; its threads end with their inputs.
        if self.acceptor.is_some() {
            self.stop();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing a panicking thread leaves half-done behind this lock: a poisoned value is fine.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    shared: &Arc<Shared>,
) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    loop {
        let (input, peer) = match listener.accept() {
            Ok(a) => a,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                tracing::warn!("relay: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.stop.load(Ordering::SeqCst) && *lock(&shared.waker) == Some(peer) {
            break;
        }
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("bettong-relay".to_string())
            .spawn(move || serve(input, peer, target, &s));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                tracing::warn!("relay: cannot start a thread for {peer}: {e}");
                shared.errors.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    threads
}

/// Forwards one input connection to a new connection to `target` until the input ends.
fn serve(mut input: TcpStream, peer: SocketAddr, target: SocketAddr, shared: &Shared) {
    let mut output = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("relay: {peer}: unable to connect to {target}: {e}");
            shared.errors.fetch_add(1, Ordering::SeqCst);
            let _ = input.shutdown(Shutdown::Both);
            return;
        }
    };
    // Whole chunks are written at once, so Nagle would only delay the last one.
    let _ = output.set_nodelay(true);
    if let Err(e) = forward(&mut input, &mut output, shared) {
        tracing::warn!("relay: {peer}: {e}");
        shared.errors.fetch_add(1, Ordering::SeqCst);
        let _ = input.shutdown(Shutdown::Both);
    }
    // The receiver sees the end of this stream once everything before it has arrived.
    let _ = output.shutdown(Shutdown::Write);
}

/// The read → whole frames → write loop. Returns at the end of the input, or an error.
fn forward(input: &mut TcpStream, output: &mut TcpStream, shared: &Shared) -> Result<(), String> {
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    // buf[..end] holds read bytes; buf[..whole] of them are whole frames already written.
    let mut end = 0;
    loop {
        let n = match input.read(&mut buf[end..]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read failed: {e}")),
        };
        if n == 0 {
            return if end == 0 {
                Ok(())
            } else {
                Err(format!(
                    "input ended in the middle of a frame ({end} bytes dropped)"
                ))
            };
        }
        end += n;
        let scan = scan_frames(&buf[..end], MAX_FRAME, u64::MAX);
        if let Some(len) = scan.oversized {
            return Err(format!(
                "frame header says {len} bytes, more than the relay's limit of {MAX_FRAME}"
            ));
        }
        if scan.frames > 0 {
            shared.frames_in.fetch_add(scan.frames, Ordering::Relaxed);
            output
                .write_all(&buf[..scan.end])
                .map_err(|e| format!("writing to the target: {e}"))?;
            shared.frames_out.fetch_add(scan.frames, Ordering::Relaxed);
            // Keep the incomplete tail at the front, so the next read appends to it.
            buf.copy_within(scan.end..end, 0);
            end -= scan.end;
        }
        if let Some(need) = scan.need.filter(|need| *need > buf.len()) {
            // One frame larger than the buffer (within MAX_FRAME): grow for it, once.
            buf.resize(need, 0);
        }
    }
}
