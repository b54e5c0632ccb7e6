//! `bettong receive`: the giles receiver and data_receiver in one (reference §1.2–1.3).
//!
//! It listens on a TCP port, accepts any number of concurrent connections (the engine opens one
//! per shard), and feeds everything they send into one output and one message counter:
//!
//! * `--framed`: the input is `[u32 BE len][payload]` frames. Each payload is written followed
//!   by `\n` (data_receiver's output), or with `--timestamps` as giles' binary capture record
//!   `[u32 BE payload_len][u64 BE wall-clock ns][payload]`. A zero-length frame is a message
//!   with an empty payload (data_receiver skipped those, an artefact of its read loop).
//! * otherwise the input is a raw byte stream, copied as it is; messages are `\n`-terminated
//!   lines.
//!
//! Whole frames (or lines) from one connection are written together, so connections never
//! interleave inside a frame; per connection the order is kept. A frame header larger than
//! `--max-frame` closes that connection with an error on stderr; the others carry on.
//!
//! The receiver stops after exactly `--expect` messages, or, without it, when SIGINT or SIGTERM
//! arrives (or, embedded, when [`StopHandle::stop`] is called). Data are read in 256 KiB pieces
//! and written through a 1 MiB buffer, with no allocation and no syscall per frame, so one
//! receiver keeps up with millions of small frames per second.

use std::fs::File;
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bettong::codec::scan_frames;
use bettong::units::{parse_u64, parse_usize};

/// Largest frame accepted when `--max-frame` is not given (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16_777_216;

/// Bytes asked of the kernel per read.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Output buffer; large so that a fast stream costs few write syscalls.
const OUTPUT_BUFFER_BYTES: usize = 1 << 20;

/// With nothing arriving for this long, buffered output is flushed so a reader of the output
/// (`tail -f`, a test) sees it without waiting for the end of the run.
const IDLE_FLUSH_MS: libc::c_int = 200;

/// Command-line options of `bettong receive`.
///
/// All options are long flags; number options accept `_` separators. Built by clap, or with
/// [`ReceiveArgs::new`]:
///
/// ```
/// use bettong_giles::receiver::ReceiveArgs;
/// let mut args = ReceiveArgs::new("127.0.0.1:0");
/// args.framed = true;
/// args.no_write = true;
/// args.expect = Some(1_000_000);
/// ```
#[derive(clap::Args, Debug, Clone)]
pub struct ReceiveArgs {
    /// Address to listen on; port 0 picks a free port. The bound address is printed as
    /// `listening HOST:PORT`.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: String,

    /// Input is `[u32 BE len][payload]` frames; otherwise a raw byte stream of lines.
    #[arg(long)]
    pub framed: bool,

    /// Count the data but write nothing.
    #[arg(long, conflicts_with = "output")]
    pub no_write: bool,

    /// Write to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Write giles' binary records `[u32 BE len][u64 BE wall-clock ns][payload]` (framed only).
    #[arg(long, requires = "framed")]
    pub timestamps: bool,

    /// Stop after exactly N messages (frames, or lines in raw mode).
    #[arg(long, value_name = "N", value_parser = parse_u64)]
    pub expect: Option<u64>,

    /// Report the first and last message times and the throughput, as giles did.
    #[arg(long)]
    pub metrics: bool,

    /// Largest frame accepted; a larger header closes that connection.
    #[arg(long, value_name = "BYTES", default_value = "16_777_216", value_parser = parse_usize)]
    pub max_frame: usize,
}

impl ReceiveArgs {
    /// Options for listening on `listen` with every other option at its command-line default
    /// (raw mode, output to stdout, no limit).
    pub fn new(listen: &str) -> ReceiveArgs {
        ReceiveArgs {
            listen: listen.to_owned(),
            framed: false,
            no_write: false,
            output: None,
            timestamps: false,
            expect: None,
            metrics: false,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// True when received data go to stdout, in which case anything else meant for a person
    /// (the `listening` line, the report) belongs on stderr.
    pub fn data_to_stdout(&self) -> bool {
        !self.no_write && self.output.is_none()
    }
}

/// What one receiver run saw. Its `Display` form is the final report.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiveReport {
    /// Messages counted (and written): frames, or lines in raw mode.
    pub messages: u64,
    /// Bytes of those messages as they arrived (frame headers included).
    pub bytes: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections closed because of an error (an oversized frame, a failed read).
    pub failed_connections: u64,
    /// Wall-clock ns (CLOCK_REALTIME) when the first message arrived.
    pub first_message_ns: Option<u64>,
    /// Wall-clock ns when the last counted message arrived (with `--expect`, the N-th).
    pub last_message_ns: Option<u64>,
    /// Time from the first to the last message, measured on the monotonic clock.
    pub active: Duration,
    /// The `--expect` limit, if any.
    pub expected: Option<u64>,
    /// Whether `--metrics` asked for giles' throughput lines.
    pub metrics: bool,
}

impl ReceiveReport {
    /// Messages per second between the first and the last message; `None` with fewer than two
    /// messages or no measurable time between them.
    pub fn throughput(&self) -> Option<f64> {
        let secs = self.active.as_secs_f64();
        (self.messages > 1 && secs > 0.0).then(|| self.messages as f64 / secs)
    }
}

impl std::fmt::Display for ReceiveReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Received {} messages ({} bytes) on {} connection(s)",
            self.messages, self.bytes, self.connections
        )?;
        if self.failed_connections > 0 {
            write!(f, "; {} closed on an error", self.failed_connections)?;
        }
        if let Some(n) = self.expected.filter(|n| self.messages < *n) {
            write!(f, "\nStopped before the expected {n} messages arrived")?;
        }
        if self.metrics {
            match (self.first_message_ns, self.last_message_ns) {
                (Some(first), Some(last)) => {
                    write!(f, "\nMetrics Start: {first}\nMetrics End: {last}")?;
                    write!(
                        f,
                        "\nOverall Time: {:.6}s\nMessages: {}",
                        self.active.as_secs_f64(),
                        self.messages
                    )?;
                    match self.throughput() {
                        Some(t) => write!(f, "\nThroughput: {}k", (t / 1000.0) as u64)?,
                        None => write!(f, "\nThroughput: n/a")?,
                    }
                }
                _ => write!(f, "\nMetrics: no messages arrived")?,
            }
        }
        Ok(())
    }
}

/// Runs `bettong receive`: binds, prints `listening HOST:PORT` (on stdout, or on stderr when the
/// data go to stdout, so the data stay clean), stops on SIGINT/SIGTERM, and returns the report
/// for the caller to print (on stderr when [`ReceiveArgs::data_to_stdout`]).
///
/// ```no_run
/// use bettong_giles::receiver::{run, ReceiveArgs};
/// let mut args = ReceiveArgs::new("127.0.0.1:5555");
/// args.framed = true;
/// args.no_write = true;
/// args.expect = Some(1_000);
/// let report = run(&args).expect("receive");
/// eprintln!("{report}");
/// ```
pub fn run(args: &ReceiveArgs) -> Result<ReceiveReport, String> {
    let mut receiver = Receiver::bind(args)?;
    receiver.handle_signals()?;
    let line = format!("listening {}", receiver.local_addr());
    if args.data_to_stdout() {
        eprintln!("{line}");
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|e| format!("writing to stdout: {e}"))?;
    }
    receiver.run()
}

/// A bound receiver, to embed in a benchmark or a test: bind (port 0 is fine), read
/// [`local_addr`](Receiver::local_addr), then [`run`](Receiver::run) it, typically on its own
/// thread. It stops on `--expect` or through a [`StopHandle`].
///
/// ```
/// use bettong_giles::receiver::{ReceiveArgs, Receiver};
/// use std::io::Write;
///
/// let mut args = ReceiveArgs::new("127.0.0.1:0");
/// args.framed = true;
/// args.no_write = true;
/// args.expect = Some(2);
/// let receiver = Receiver::bind(&args).unwrap();
/// let addr = receiver.local_addr();
/// let running = std::thread::spawn(move || receiver.run());
/// let mut client = std::net::TcpStream::connect(addr).unwrap();
/// client.write_all(b"\0\0\0\x02hi\0\0\0\x03you").unwrap();
/// let report = running.join().unwrap().unwrap();
/// assert_eq!(report.messages, 2);
/// ```
pub struct Receiver {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: Config,
    wake_rx: UnixStream,
    shared: Arc<Shared>,
    watch_signals: bool,
}

/// Stops a running [`Receiver`] from another thread: it finishes what it has read, flushes its
/// output and returns its report.
#[derive(Clone)]
pub struct StopHandle {
    shared: Arc<Shared>,
}

impl StopHandle {
    /// Asks the receiver to stop; returns at once.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake();
    }
}

#[derive(Clone, Copy, Debug)]
struct Config {
    framed: bool,
    timestamps: bool,
    expect: Option<u64>,
    metrics: bool,
    max_frame: usize,
}

/// State shared by the accept loop, the connection threads and stop handles.
struct Shared {
    sink: Mutex<Sink>,
    /// Set once `--expect` is reached or the output failed: nothing more is counted.
    done: AtomicBool,
    /// Set by [`StopHandle::stop`] and at shutdown.
    stop: AtomicBool,
    failed: AtomicU64,
    /// Writing a byte here wakes the accept loop at once (a self-pipe).
    wake_tx: UnixStream,
}

impl Shared {
    fn wake(&self) {
        // Nonblocking: a full pipe already holds a pending wake-up, so a failure loses nothing.
        let _ = (&self.wake_tx).write(&[1]);
    }

    fn sink(&self) -> MutexGuard<'_, Sink> {
        // A connection thread that panicked holds no invariant the counters depend on, so the
        // data behind a poisoned lock are still good.
        self.sink.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The one output and counter all connections feed.
struct Sink {
    out: Option<BufWriter<Box<dyn Write + Send>>>,
    messages: u64,
    bytes: u64,
    first: Option<(u64, Instant)>,
    last: Option<(u64, Instant)>,
    error: Option<String>,
}

impl Sink {
    fn note_arrival(&mut self, wall: u64, at: Instant) {
        if self.first.is_none() {
            self.first = Some((wall, at));
        }
        self.last = Some((wall, at));
    }

    fn fail(&mut self, e: std::io::Error) {
        if self.error.is_none() {
            self.error = Some(format!("writing the output: {e}"));
        }
    }
}

impl Receiver {
    /// Binds the listening socket and opens the output (the file is created now, so a bad path
    /// fails here rather than at the first message).
    pub fn bind(args: &ReceiveArgs) -> Result<Receiver, String> {
        if args.expect == Some(0) {
            return Err("--expect must be at least 1".into());
        }
        if args.timestamps && !args.framed {
            return Err("--timestamps needs --framed".into());
        }
        if args.max_frame > u32::MAX as usize {
            return Err(format!(
                "--max-frame {} is more than a 4-byte header can say",
                args.max_frame
            ));
        }
        let addr = args
            .listen
            .to_socket_addrs()
            .map_err(|e| format!("`{}` is not a usable HOST:PORT: {e}", args.listen))?
            .next()
            .ok_or_else(|| format!("`{}` resolves to no address", args.listen))?;
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("unable to listen on {addr}: {e}"))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| format!("reading the bound address: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("setting the listener nonblocking: {e}"))?;

        let out: Option<Box<dyn Write + Send>> = if args.no_write {
            None
        } else if let Some(path) = &args.output {
            let file =
                File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
            Some(Box::new(file))
        } else {
            Some(Box::new(std::io::stdout()))
        };

        let (wake_tx, wake_rx) =
            UnixStream::pair().map_err(|e| format!("creating the wake-up socket: {e}"))?;
        for s in [&wake_tx, &wake_rx] {
            s.set_nonblocking(true)
                .map_err(|e| format!("setting the wake-up socket nonblocking: {e}"))?;
        }
        let shared = Arc::new(Shared {
            sink: Mutex::new(Sink {
                out: out.map(|o| BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, o)),
                messages: 0,
                bytes: 0,
                first: None,
                last: None,
                error: None,
            }),
            done: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            failed: AtomicU64::new(0),
            wake_tx,
        });
        Ok(Receiver {
            listener,
            local_addr,
            config: Config {
                framed: args.framed,
                timestamps: args.timestamps,
                expect: args.expect,
                metrics: args.metrics,
                max_frame: args.max_frame,
            },
            wake_rx,
            shared,
            watch_signals: false,
        })
    }

    /// The address actually bound (with the real port when the request was port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops this receiver from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Makes SIGINT and SIGTERM stop this receiver cleanly (output flushed, report returned).
    /// The handlers fire once; a second signal has its default effect, so a stuck shutdown can
    /// still be interrupted. Meant for one receiver per process, as `bettong receive` runs.
    pub fn handle_signals(&mut self) -> Result<(), String> {
        SIGNALLED.store(false, Ordering::SeqCst);
        SIGNAL_WAKE_FD.store(self.shared.wake_tx.as_raw_fd(), Ordering::SeqCst);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            install_handler(sig)
                .map_err(|e| format!("installing the handler for signal {sig}: {e}"))?;
        }
        self.watch_signals = true;
        Ok(())
    }

    /// Accepts connections and receives until `--expect` messages have arrived, a stop was
    /// asked for, or the output failed; then closes the connections, flushes the output and
    /// returns the report.
    pub fn run(self) -> Result<ReceiveReport, String> {
        let mut conns: Vec<(TcpStream, JoinHandle<()>)> = Vec::new();
        let mut accepted = 0u64;
        let listen_fd = self.listener.as_raw_fd();
        let wake_fd = self.wake_rx.as_raw_fd();
        let outcome = loop {
            if self.should_stop() {
                break Ok(());
            }
            let (acceptable, woken) = match wait_readable(listen_fd, wake_fd, IDLE_FLUSH_MS) {
                Ok(r) => r,
                Err(e) => break Err(format!("waiting for connections: {e}")),
            };
            if woken {
                drain(&self.wake_rx);
            }
            if acceptable {
                self.accept_all(&mut conns, &mut accepted);
            }
            if !acceptable && !woken {
                let mut sink = self.shared.sink();
                if let Some(Err(e)) = sink.out.as_mut().map(|o| o.flush()) {
                    sink.fail(e);
                    self.shared.done.store(true, Ordering::SeqCst);
                }
            }
        };

        // Shut the sockets so that connection threads blocked in read return at once.
        self.shared.stop.store(true, Ordering::SeqCst);
        for (stream, _) in &conns {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for (_, handle) in conns {
            if handle.join().is_err() {
                self.shared.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
        outcome?;

        let mut sink = self.shared.sink();
        if let Some(Err(e)) = sink.out.as_mut().map(|o| o.flush()) {
            sink.fail(e);
        }
        if let Some(e) = sink.error.take() {
            return Err(e);
        }
        let active = match (sink.first, sink.last) {
            (Some((_, a)), Some((_, b))) => b.saturating_duration_since(a),
            _ => Duration::ZERO,
        };
        Ok(ReceiveReport {
            messages: sink.messages,
            bytes: sink.bytes,
            connections: accepted,
            failed_connections: self.shared.failed.load(Ordering::SeqCst),
            first_message_ns: sink.first.map(|(w, _)| w),
            last_message_ns: sink.last.map(|(w, _)| w),
            active,
            expected: self.config.expect,
            metrics: self.config.metrics,
        })
    }

    fn should_stop(&self) -> bool {
        self.shared.done.load(Ordering::SeqCst)
            || self.shared.stop.load(Ordering::SeqCst)
            || (self.watch_signals && SIGNALLED.load(Ordering::SeqCst))
    }

    /// Accepts every pending connection and starts a thread for each.
    fn accept_all(&self, conns: &mut Vec<(TcpStream, JoinHandle<()>)>, accepted: &mut u64) {
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Typically out of file descriptors: back off rather than spin on poll.
                    tracing::warn!("receive: accepting a connection failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            };
            // Threads of connections that already ended are reaped here, so a long run with
            // many short connections does not pile up descriptors.
            conns.retain(|(_, h)| !h.is_finished());
            let started = stream
                .set_nonblocking(false)
                .and_then(|_| stream.try_clone())
                .and_then(|control| {
                    let shared = Arc::clone(&self.shared);
                    let config = self.config;
                    std::thread::Builder::new()
                        .name(format!("receive {peer}"))
                        .spawn(move || serve(stream, peer, config, &shared))
                        .map(|handle| (control, handle))
                });
            match started {
                Ok(conn) => {
                    *accepted += 1;
                    conns.push(conn);
                }
                Err(e) => {
                    tracing::warn!("receive: could not serve the connection from {peer}: {e}");
                    self.shared.failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if self.watch_signals {
            // The signal handler must never write to a descriptor that may be closed and reused;
            // unregister ours unless another receiver has taken over since.
            let fd = self.shared.wake_tx.as_raw_fd();
            let _ = SIGNAL_WAKE_FD.compare_exchange(fd, -1, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}

/// Empties the wake-up socket.
fn drain(mut rx: &UnixStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = rx.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Waits until the listener or the wake-up socket is readable, or `timeout_ms` passes.
fn wait_readable(
    listen_fd: RawFd,
    wake_fd: RawFd,
    timeout_ms: libc::c_int,
) -> std::io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: listen_fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake_fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a live array of two initialised pollfd structs and the length passed is
    // its length; poll only writes their `revents` fields.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // A signal interrupted the wait; the caller looks at the flags and waits again.
        return if e.kind() == ErrorKind::Interrupted {
            Ok((false, true))
        } else {
            Err(e)
        };
    }
    Ok((fds[0].revents != 0, fds[1].revents != 0))
}

/// Set by the signal handler.
static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// The wake-up socket the signal handler writes to; -1 when no receiver listens for signals.
static SIGNAL_WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_signal: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
    let fd = SIGNAL_WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is one live byte on this stack. The
        // descriptor is the receiver's wake-up socket, which stays open while it is registered
        // here (a receiver unregisters it when dropped, before its socket can close).
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

fn install_handler(signal: libc::c_int) -> std::io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags) that is completed
    // below before use; `on_signal` only touches atomics and calls write(2), both
    // async-signal-safe, and the pointers passed to sigemptyset/sigaction are to this live local.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME, as giles used).
fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[inline]
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// What to do after handing a piece of input to the sink.
enum Step {
    /// Carry on; `consumed` bytes were used, the rest is an incomplete frame or line.
    Go { consumed: usize },
    /// Stop reading this connection quietly (limit reached or output failed).
    Stop,
}

/// Writes the frames in `data` (whole frames only) in the chosen output format.
fn write_frames(
    out: &mut impl Write,
    data: &[u8],
    timestamps: bool,
    wall: u64,
) -> std::io::Result<()> {
    let stamp = wall.to_be_bytes();
    let mut pos = 0;
    while pos < data.len() {
        let end = pos + 4 + be_u32(&data[pos..]) as usize;
        if timestamps {
            out.write_all(&data[pos..pos + 4])?;
            out.write_all(&stamp)?;
            out.write_all(&data[pos + 4..end])?;
        } else {
            out.write_all(&data[pos + 4..end])?;
            out.write_all(b"\n")?;
        }
        pos = end;
    }
    Ok(())
}

/// Position just past the `n`-th newline of `data` (`n` ≥ 1), if there are that many.
fn nth_line_end(data: &[u8], n: u64) -> Option<usize> {
    data.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth((n - 1) as usize)
        .map(|(i, _)| i + 1)
}

fn count_lines(data: &[u8]) -> u64 {
    data.iter().filter(|b| **b == b'\n').count() as u64
}

/// Serves one connection until it closes, breaks, sends a bad frame, or the receiver stops.
fn serve(mut stream: TcpStream, peer: SocketAddr, config: Config, shared: &Shared) {
    serve_until_done(&mut stream, peer, config, shared);
    // The accept loop keeps a clone of this socket (to interrupt the read at shutdown), so
    // dropping ours would not close the connection: shut it explicitly so the peer sees it end.
    let _ = stream.shutdown(Shutdown::Both);
}

fn serve_until_done(stream: &mut TcpStream, peer: SocketAddr, config: Config, shared: &Shared) {
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut start = 0;
    let mut end = 0;
    loop {
        // Keep the unconsumed tail (part of a frame or line) at the front, so the next read
        // appends to it.
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if end == buf.len() && !config.framed {
            // A line longer than the buffer: pass it on in pieces rather than stall.
            match deliver_raw(&buf[..end], true, config.expect, shared) {
                Step::Go { consumed } => start = consumed,
                Step::Stop => return,
            }
            continue;
        }
        let n = match stream.read(&mut buf[end..]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                if !shared.stop.load(Ordering::SeqCst) {
                    tracing::warn!("receive: connection from {peer}: read failed: {e}");
                    shared.failed.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
        };
        if n == 0 {
            if end > start {
                if config.framed {
                    if !shared.stop.load(Ordering::SeqCst) {
                        tracing::warn!(
                            "receive: connection from {peer} closed in the middle of a frame; \
                             dropped its last {} bytes",
                            end - start
                        );
                    }
                } else {
                    // A final line without its `\n` is still data; it is not a counted line.
                    let _ = deliver_raw(&buf[start..end], true, config.expect, shared);
                }
            }
            return;
        }
        end += n;
        let step = if config.framed {
            match deliver_frames(&buf[start..end], config, shared) {
                Ok((step, need)) => {
                    if let Some(need) = need.filter(|need| *need > buf.len()) {
                        // A frame larger than the buffer (but within --max-frame): grow once
                        // for it; the connection keeps the larger buffer.
                        buf.resize(need, 0);
                    }
                    step
                }
                Err(len) => {
                    tracing::warn!(
                        "receive: connection from {peer}: frame header says {len} bytes, more \
                         than --max-frame {}; closing the connection",
                        config.max_frame
                    );
                    shared.failed.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            }
        } else {
            deliver_raw(&buf[start..end], false, config.expect, shared)
        };
        match step {
            Step::Go { consumed } => start += consumed,
            Step::Stop => return,
        }
    }
}

/// Counts and writes the complete frames at the start of `data`. Returns the step and the size
/// of the next incomplete frame, or the announced length of an oversized frame (after the
/// frames before it have been delivered).
fn deliver_frames(
    data: &[u8],
    config: Config,
    shared: &Shared,
) -> Result<(Step, Option<usize>), usize> {
    let arrived = Instant::now();
    let wall = wall_ns();
    // Scan outside the lock so that connections only serialise on the actual output.
    let mut scan = scan_frames(data, config.max_frame, u64::MAX);
    if scan.frames > 0 {
        let mut sink = shared.sink();
        if shared.done.load(Ordering::SeqCst) {
            return Ok((Step::Stop, None));
        }
        let mut reached = false;
        if let Some(expect) = config.expect {
            let room = expect.saturating_sub(sink.messages);
            if scan.frames >= room {
                if scan.frames > room {
                    scan = scan_frames(data, config.max_frame, room);
                }
                reached = true;
            }
        }
        if let Some(out) = sink.out.as_mut() {
            if let Err(e) = write_frames(out, &data[..scan.end], config.timestamps, wall) {
                sink.fail(e);
                reached = true;
            }
        }
        sink.messages += scan.frames;
        sink.bytes += scan.end as u64;
        sink.note_arrival(wall, arrived);
        if reached {
            shared.done.store(true, Ordering::SeqCst);
            drop(sink);
            shared.wake();
            return Ok((Step::Stop, None));
        }
    }
    match scan.oversized {
        Some(len) => Err(len),
        None => Ok((Step::Go { consumed: scan.end }, scan.need)),
    }
}

/// Counts and writes whole lines of `data` (everything, when `all`). Returns how much was used.
fn deliver_raw(data: &[u8], all: bool, expect: Option<u64>, shared: &Shared) -> Step {
    let arrived = Instant::now();
    let wall = wall_ns();
    let mut cut = if all {
        data.len()
    } else {
        data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
    };
    if cut == 0 {
        return Step::Go { consumed: 0 };
    }
    let mut lines = count_lines(&data[..cut]);
    let mut sink = shared.sink();
    if shared.done.load(Ordering::SeqCst) {
        return Step::Stop;
    }
    let mut reached = false;
    if let Some(expect) = expect {
        let room = expect.saturating_sub(sink.messages);
        if lines >= room {
            if lines > room {
                cut = nth_line_end(data, room).unwrap_or(cut);
                lines = room;
            }
            reached = true;
        }
    }
    if let Some(out) = sink.out.as_mut() {
        if let Err(e) = out.write_all(&data[..cut]) {
            sink.fail(e);
            reached = true;
        }
    }
    sink.messages += lines;
    sink.bytes += cut as u64;
    if lines > 0 {
        sink.note_arrival(wall, arrived);
    }
    if reached {
        shared.done.store(true, Ordering::SeqCst);
        drop(sink);
        shared.wake();
        return Step::Stop;
    }
    Step::Go { consumed: cut }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bettong::codec::write_frame;

    #[test]
    fn frames_are_written_as_lines_or_timestamped_records() {
        let mut data = Vec::new();
        write_frame(&mut data, b"x");
        write_frame(&mut data, b"yz");
        let mut lines = Vec::new();
        write_frames(&mut lines, &data, false, 0).unwrap();
        assert_eq!(lines, b"x\nyz\n");
        let mut records = Vec::new();
        write_frames(&mut records, &data, true, 0x0102).unwrap();
        assert_eq!(
            records,
            b"\0\0\0\x01\0\0\0\0\0\0\x01\x02x\0\0\0\x02\0\0\0\0\0\0\x01\x02yz"
        );
    }

    #[test]
    fn lines_are_counted_and_cut() {
        assert_eq!(count_lines(b"a\nb\n\nc"), 3);
        assert_eq!(nth_line_end(b"a\nb\n\nc", 2), Some(4));
        assert_eq!(nth_line_end(b"a\nb", 2), None);
    }

    #[test]
    fn report_reads_like_giles() {
        let report = ReceiveReport {
            messages: 2_000_000,
            bytes: 24_000_000,
            connections: 2,
            failed_connections: 0,
            first_message_ns: Some(10),
            last_message_ns: Some(2_000_000_010),
            active: Duration::from_secs(2),
            expected: Some(2_000_000),
            metrics: true,
        };
        let text = report.to_string();
        assert!(text.contains("Metrics Start: 10\n"), "{text}");
        assert!(text.contains("Overall Time: 2.000000s"), "{text}");
        assert!(text.contains("Messages: 2000000"), "{text}");
        assert!(text.contains("Throughput: 1000k"), "{text}");
    }

    #[test]
    fn bad_arguments_are_refused_at_bind() {
        let mut args = ReceiveArgs::new("127.0.0.1:0");
        args.expect = Some(0);
        assert!(Receiver::bind(&args).is_err());
        let mut args = ReceiveArgs::new("127.0.0.1:0");
        args.timestamps = true;
        assert!(Receiver::bind(&args).is_err());
        assert!(Receiver::bind(&ReceiveArgs::new("not an address")).is_err());
    }
}
