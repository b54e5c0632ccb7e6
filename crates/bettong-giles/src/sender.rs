//! `bettong send`: the giles sender (reference §1.1), plus a blaster mode.
//!
//! The sender connects to one or more `HOST:PORT` targets and writes framed records to them:
//! `[u32 BE length][payload]`, the framing every bettong and Wallaroo TCP source reads.
//!
//! * **Paced mode** (the default) sends one batch of `--batch-size` messages every `--interval`
//!   nanoseconds, open loop, batches going round-robin over the connections. Deadlines are
//!   absolute (`start + k × interval`), so sleep overshoot never accumulates into drift.
//!   Unlike giles, a sender that falls behind (because a socket pushes back) never skips a batch:
//!   it keeps sending until it has caught up, and its report says how far behind it fell, so a
//!   slow system under test cannot hide behind a silently reduced offered load.
//! * **Blast mode** (`--blast`) preloads the data, repeated into one contiguous buffer of whole
//!   records, and writes it as fast as the sockets accept, looping over it until `--messages` or
//!   `--duration` is reached.
//!
//! What is sent:
//! * text files (the default): each non-empty line, without its `\n` (and a `\r` before it),
//!   framed as `[u32 BE len][line]`;
//! * `--binary --msg-size N`: the file is cut into N-byte records that already carry their own
//!   4-byte header, and each is sent as it is;
//! * `--binary --variable-size`: a file of `[u32 BE len][payload]` records, re-framed identically;
//! * no file: the decimal strings "1", "2", … framed as text, or with `--u64` the 12-byte frame
//!   `[u32 BE 8][u64 BE counter]`; both count from `--start-from` + 1.
//!
//! Unless `--no-write` is given, every message is also logged to `sent.txt` (or `--sent-file`) as
//! giles does: `<wall-clock ns>, <payload bytes>\n`, one timestamp per batch. The payload is the
//! record without its 4-byte header, the same bytes a receiver writes out, so the two files can
//! be matched for end-to-end latency. `--blast` never writes this log: at blast rates the log, not
//! the network, would set the pace.
//!
//! All options are long flags only. In particular `--host` has no `-h` short form (giles had
//! one), so that `-h` stays clap's help.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bettong::units::{parse_duration, parse_u64, parse_usize};

/// Messages per batch when `--batch-size` is not given (giles' default).
pub const DEFAULT_BATCH_SIZE: usize = 500;

/// Nanoseconds between batches when `--interval` is not given (giles' default: with the default
/// batch size, 100 000 messages per second).
pub const DEFAULT_INTERVAL_NS: u64 = 5_000_000;

/// Bytes handed to one `write` in blast mode: large enough that the syscall cost vanishes,
/// small enough that round-robin over several connections stays fair.
const BLAST_WRITE_BYTES: usize = 256 * 1024;

/// Smallest preloaded buffer in blast mode; a short file is repeated up to this size so that
/// each write can carry [`BLAST_WRITE_BYTES`] of whole records.
const BLAST_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// How long before a deadline the pacer stops sleeping and polls the clock (see [`wait_until`]):
/// `thread::sleep` overshoots by tens of microseconds, which would otherwise show up as lag on
/// every batch.
const POLL_WINDOW: Duration = Duration::from_micros(100);

/// How long to wait for a target that does not answer at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Command-line options of `bettong send`.
///
/// Every option is a long flag; `--host` deliberately has no `-h` short form so that `-h` stays
/// the help flag. Number options accept `_` separators (`--interval 2_500_000`).
///
/// Built by clap from a command line, or directly with [`SendArgs::new`]:
///
/// ```
/// use bettong_giles::sender::SendArgs;
/// let mut args = SendArgs::new("127.0.0.1:7000", 1_000_000);
/// args.batch_size = 1000;
/// args.no_write = true;
/// assert_eq!(args.interval, 5_000_000);
/// ```
#[derive(clap::Args, Debug, Clone)]
pub struct SendArgs {
    /// Target(s), comma separated; batches go round-robin over the connections. All are
    /// connected before anything is sent.
    #[arg(
        long,
        value_name = "HOST:PORT[,HOST:PORT...]",
        value_delimiter = ',',
        required = true
    )]
    pub host: Vec<String>,

    /// Stop after N messages. Required unless --duration is given.
    #[arg(long, value_name = "N", value_parser = parse_u64, required_unless_present = "duration")]
    pub messages: Option<u64>,

    /// Data file(s), comma separated, sent one after another. Without a file the sender makes
    /// up counter messages.
    #[arg(long, value_name = "PATH[,PATH...]", value_delimiter = ',')]
    pub file: Vec<PathBuf>,

    /// Messages per batch; each batch is one write.
    #[arg(long, value_name = "N", default_value = "500", value_parser = parse_usize)]
    pub batch_size: usize,

    /// Nanoseconds between batches (paced mode).
    #[arg(long, value_name = "NS", default_value = "5_000_000", value_parser = parse_u64)]
    pub interval: u64,

    /// When the last file ends, start again from the first one.
    #[arg(long)]
    pub repeat: bool,

    /// The file is binary; needs exactly one of --msg-size and --variable-size.
    #[arg(long, requires = "file")]
    pub binary: bool,

    /// Fixed-size binary records of N bytes, including their own 4-byte header; sent as they are.
    #[arg(
        long,
        value_name = "N",
        value_parser = parse_usize,
        requires = "binary",
        conflicts_with = "variable_size"
    )]
    pub msg_size: Option<usize>,

    /// Binary file of `[u32 BE len][payload]` records, each sent re-framed the same way.
    #[arg(long, requires = "binary")]
    pub variable_size: bool,

    /// Without a file: send `[u32 BE 8][u64 BE counter]` frames instead of decimal text.
    #[arg(long, conflicts_with = "file")]
    pub u64: bool,

    /// First generated counter value is N + 1.
    #[arg(long, value_name = "N", default_value = "0", value_parser = parse_u64)]
    pub start_from: u64,

    /// Do not write the sent-messages log.
    #[arg(long)]
    pub no_write: bool,

    /// Where the sent-messages log goes (giles always wrote `sent.txt` in the current directory).
    #[arg(long, value_name = "PATH", default_value = "sent.txt")]
    pub sent_file: PathBuf,

    /// Preload the data and write it as fast as the sockets accept, looping over it; ignores
    /// --interval and never writes the sent-messages log.
    #[arg(long)]
    pub blast: bool,

    /// Stop after this long (`10s`, `500ms`, `2m`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Show a progress line on stderr when it is a terminal (the `send` command sets it;
    /// senders inside `bench` leave it off).
    #[arg(skip)]
    pub progress: bool,
}

impl SendArgs {
    /// Options for sending `messages` generated text messages to `host` (one `HOST:PORT`, or
    /// several separated by commas), with every other option at its command-line default.
    pub fn new(host: &str, messages: u64) -> SendArgs {
        SendArgs {
            host: host.split(',').map(str::to_owned).collect(),
            messages: Some(messages),
            file: Vec::new(),
            batch_size: DEFAULT_BATCH_SIZE,
            interval: DEFAULT_INTERVAL_NS,
            repeat: false,
            binary: false,
            msg_size: None,
            variable_size: false,
            u64: false,
            start_from: 0,
            no_write: false,
            sent_file: PathBuf::from("sent.txt"),
            blast: false,
            duration: None,
            progress: false,
        }
    }

    /// Checks the combinations clap cannot see when the struct is built by hand.
    fn validate(&self) -> Result<(), String> {
        if self.messages.is_none() && self.duration.is_none() {
            return Err("give --messages or --duration (or both)".into());
        }
        if self.batch_size == 0 {
            return Err("--batch-size must be at least 1".into());
        }
        if !self.blast && self.interval == 0 {
            return Err("--interval must be at least 1 ns (use --blast to send unpaced)".into());
        }
        if self.binary {
            if self.file.is_empty() {
                return Err("--binary needs --file".into());
            }
            match (self.msg_size, self.variable_size) {
                (Some(_), true) | (None, false) => {
                    return Err(
                        "--binary needs exactly one of --msg-size and --variable-size".into(),
                    )
                }
                (Some(n), false) if n < 4 => {
                    return Err(format!(
                        "--msg-size {n} is too small: records include their 4-byte header"
                    ))
                }
                _ => {}
            }
        } else if self.msg_size.is_some() || self.variable_size {
            return Err("--msg-size and --variable-size need --binary".into());
        }
        if self.u64 && !self.file.is_empty() {
            return Err("--u64 generates its own data; it cannot be used with --file".into());
        }
        Ok(())
    }
}

/// What one [`run`] did. Its `Display` form is the final report that `bettong send` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct SendReport {
    /// Messages written to the sockets.
    pub messages: u64,
    /// Bytes written to the sockets, frame headers included.
    pub bytes: u64,
    /// From the first write until the run ended (for a paced run, the end of its last interval).
    pub elapsed: Duration,
    /// Number of connections the batches were spread over.
    pub connections: usize,
    /// Pacing figures; `None` for `--blast`.
    pub pacing: Option<PacingReport>,
    /// True when the data ended (no `--repeat`) before the message or time limit.
    pub data_ran_out: bool,
}

/// How a paced run kept to its schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct PacingReport {
    /// Messages per batch that were asked for.
    pub batch_size: usize,
    /// Time between batch deadlines.
    pub interval: Duration,
    /// Batches written.
    pub batches: u64,
    /// Batches that started a whole interval or more after their deadline.
    pub late_batches: u64,
    /// The furthest any batch started behind its deadline.
    pub max_behind: Duration,
    /// How far behind the last batch started.
    pub final_behind: Duration,
}

impl SendReport {
    /// Achieved rate in messages per second.
    pub fn rate(&self) -> f64 {
        per_second(self.messages, self.elapsed)
    }

    /// The rate the schedule offered (`batch_size / interval`), in messages per second; `None`
    /// for blast mode, which offers whatever the sockets take.
    pub fn offered_rate(&self) -> Option<f64> {
        self.pacing
            .as_ref()
            .map(|p| p.batch_size as f64 / p.interval.as_secs_f64())
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl std::fmt::Display for SendReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Sent {} messages, {} bytes in {:.3} s over {} connection(s)",
            self.messages,
            self.bytes,
            self.elapsed.as_secs_f64(),
            self.connections
        )?;
        write!(
            f,
            "Rate: {:.0} msgs/s, {:.1} MB/s",
            self.rate(),
            per_second(self.bytes, self.elapsed) / 1e6
        )?;
        if let (Some(p), Some(offered)) = (&self.pacing, self.offered_rate()) {
            let achieved = self.rate();
            write!(
                f,
                "\nOffered: {offered:.0} msgs/s ({} per {} ns); achieved: {achieved:.0} msgs/s \
                 ({:.1}% of offered)",
                p.batch_size,
                p.interval.as_nanos(),
                if offered > 0.0 {
                    achieved / offered * 100.0
                } else {
                    0.0
                }
            )?;
            write!(
                f,
                "\nBehind schedule: at most {:.3} ms, {:.3} ms at the last batch; \
                 {} of {} batches started an interval or more late",
                millis(p.max_behind),
                millis(p.final_behind),
                p.late_batches,
                p.batches
            )?;
        } else {
            write!(f, "\nMode: blast (unpaced)")?;
        }
        if self.data_ran_out {
            write!(f, "\nData ran out before the limit (no --repeat)")?;
        }
        Ok(())
    }
}

/// Resolves a comma-separated list of `HOST:PORT` targets; host names are looked up and the first
/// address of each is used.
///
/// ```
/// use bettong_giles::sender::parse_hosts;
/// let addrs = parse_hosts("127.0.0.1:7000, 127.0.0.1:7001").unwrap();
/// assert_eq!(addrs.len(), 2);
/// assert_eq!(addrs[1].port(), 7001);
/// assert!(parse_hosts("127.0.0.1").is_err());
/// ```
pub fn parse_hosts(list: &str) -> Result<Vec<SocketAddr>, String> {
    let mut addrs = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("`{list}`: empty target in the host list"));
        }
        let first = item
            .to_socket_addrs()
            .map_err(|e| format!("`{item}` is not a usable HOST:PORT: {e}"))?
            .next()
            .ok_or_else(|| format!("`{item}` resolves to no address"))?;
        addrs.push(first);
    }
    Ok(addrs)
}

/// Connects to every target, with TCP_NODELAY so a batch leaves as soon as it is written.
fn connect_all(addrs: &[SocketAddr]) -> Result<Vec<TcpStream>, String> {
    addrs
        .iter()
        .map(|addr| {
            let stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
                .map_err(|e| format!("unable to connect to {addr}: {e}"))?;
            stream
                .set_nodelay(true)
                .map_err(|e| format!("setting TCP_NODELAY on {addr}: {e}"))?;
            Ok(stream)
        })
        .collect()
}

/// Sends as `args` says and returns the report. Prints `Connected` on stdout once every target
/// is connected; fails with a message when a target cannot be reached, a file cannot be read or
/// is malformed, or a connection breaks.
///
/// ```no_run
/// use bettong_giles::sender::{run, SendArgs};
/// let mut args = SendArgs::new("127.0.0.1:7000", 10_000);
/// args.no_write = true;
/// let report = run(&args).expect("send");
/// println!("{report}");
/// ```
pub fn run(args: &SendArgs) -> Result<SendReport, String> {
    prepare(args)?.send()
}

/// Loads the data (in blast mode, also repeats it into the write buffer) and connects to every
/// target, printing `Connected` on stdout; [`Prepared::send`] then sends. A benchmark prepares
/// its senders before it starts its clock: for `bench market-spread` at 10 M messages the
/// load is over 500 MB of files read and copied, which took 0.3–0.5 s of runs of 1.1–2.4 s
/// while the sender was timed from `run`'s start (the relay baseline's file is 220 kB).
///
/// ```no_run
/// use bettong_giles::sender::{prepare, SendArgs};
/// let mut args = SendArgs::new("127.0.0.1:7000", 10_000);
/// args.blast = true;
/// let ready = prepare(&args).expect("load and connect");
/// let started = std::time::Instant::now();
/// let report = ready.send().expect("send");
/// println!("{report} in {:?}", started.elapsed());
/// ```
pub fn prepare(args: &SendArgs) -> Result<Prepared, String> {
    args.validate()?;
    let source = Source::load(args)?;
    let addrs = parse_hosts(&args.host.join(","))?;
    let conns = connect_all(&addrs)?;
    // The log is created once every target is reached, so a failed start leaves no file.
    let feed = if args.blast {
        Feed::Blast(BlastFeed::new(source))
    } else {
        let log = if args.no_write {
            None
        } else {
            Some(SentLog::create(&args.sent_file)?)
        };
        Feed::Paced(source, log)
    };
    {
        let mut out = std::io::stdout().lock();
        // A broken stdout must not stop the load: the report carries the result.
        let _ = writeln!(out, "Connected");
        let _ = out.flush();
    }
    Ok(Prepared {
        args: args.clone(),
        feed,
        addrs,
        conns,
    })
}

/// A sender with its data loaded and its connections open (see [`prepare`]).
pub struct Prepared {
    args: SendArgs,
    feed: Feed,
    addrs: Vec<SocketAddr>,
    conns: Vec<TcpStream>,
}

/// What a prepared sender sends, by mode.
enum Feed {
    Blast(BlastFeed),
    Paced(Source, Option<SentLog>),
}

impl Prepared {
    /// Sends as the arguments said and returns the report; fails when a connection breaks or
    /// the `sent.txt` log cannot be written.
    pub fn send(mut self) -> Result<SendReport, String> {
        let args = &self.args;
        let mut link = Link {
            conns: &mut self.conns,
            addrs: &self.addrs,
            next: 0,
            progress: if args.progress {
                crate::progress::Progress::on_terminal("send", args.messages)
            } else {
                crate::progress::Progress::off()
            },
        };
        let limits = Limits {
            messages: args.messages.unwrap_or(u64::MAX),
            duration: args.duration,
        };
        match self.feed {
            Feed::Blast(feed) => blast(feed, &mut link, limits),
            Feed::Paced(source, log) => paced(source, &mut link, limits, args, log),
        }
    }
}

#[derive(Clone, Copy)]
struct Limits {
    messages: u64,
    duration: Option<Duration>,
}

/// The connections, written to in turn.
struct Link<'a> {
    conns: &'a mut [TcpStream],
    addrs: &'a [SocketAddr],
    next: usize,
    progress: crate::progress::Progress,
}

impl Link<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let i = self.next;
        self.next = (i + 1) % self.conns.len();
        self.conns[i]
            .write_all(bytes)
            .map_err(|e| format!("writing to {}: {e}", self.addrs[i]))
    }
}

/// How records sit in a buffer of wire bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    /// Every record is `[u32 BE len][payload]`.
    LengthPrefixed,
    /// Every record is this many bytes, its first four being a header we do not interpret.
    Fixed(usize),
}

impl Framing {
    /// Length of the record that starts at `pos`; the buffer holds whole records only.
    #[inline]
    fn record_len(self, buf: &[u8], pos: usize) -> usize {
        match self {
            Framing::Fixed(n) => n,
            Framing::LengthPrefixed => 4 + be_u32(&buf[pos..pos + 4]) as usize,
        }
    }
}

#[inline]
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Where messages come from.
enum Source {
    /// Preloaded wire-ready records.
    Records(Records),
    /// Generated counter messages.
    Counter { next: u64, binary: bool },
}

/// Records loaded from the files, back to back as they go on the wire.
struct Records {
    data: Vec<u8>,
    framing: Framing,
    count: u64,
    pos: usize,
    repeat: bool,
}

impl Source {
    fn load(args: &SendArgs) -> Result<Source, String> {
        if args.file.is_empty() {
            return Ok(Source::Counter {
                next: args.start_from,
                binary: args.u64,
            });
        }
        let framing = match args.msg_size {
            Some(n) if args.binary => Framing::Fixed(n),
            _ => Framing::LengthPrefixed,
        };
        let mut records = Records {
            data: Vec::new(),
            framing,
            count: 0,
            pos: 0,
            // Blast mode always loops; the limits end it.
            repeat: args.repeat || args.blast,
        };
        for path in &args.file {
            let bytes =
                std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            let added = if !args.binary {
                append_text(&mut records.data, &bytes, path)?
            } else if let Some(size) = args.msg_size {
                append_fixed(&mut records.data, bytes, size, path)?
            } else {
                append_framed(&mut records.data, bytes, path)?
            };
            records.count += added;
        }
        if records.count == 0 && records.repeat {
            return Err("the data files hold no records, so there is nothing to repeat".into());
        }
        Ok(Source::Records(records))
    }

    fn framing(&self) -> Framing {
        match self {
            Source::Records(r) => r.framing,
            Source::Counter { .. } => Framing::LengthPrefixed,
        }
    }

    /// Appends up to `max_msgs` messages to `out`, stopping early once `out` holds `max_bytes`
    /// or the data ends; returns how many were appended.
    fn fill(&mut self, out: &mut Vec<u8>, max_msgs: u64, max_bytes: usize) -> u64 {
        match self {
            Source::Records(r) => r.fill(out, max_msgs, max_bytes),
            Source::Counter { next, binary } => {
                let mut n = 0;
                while n < max_msgs && out.len() < max_bytes {
                    *next = next.wrapping_add(1);
                    if *binary {
                        out.extend_from_slice(&8u32.to_be_bytes());
                        out.extend_from_slice(&next.to_be_bytes());
                    } else {
                        let mut digits = [0u8; 20];
                        let text = format_u64(*next, &mut digits);
                        out.extend_from_slice(&(text.len() as u32).to_be_bytes());
                        out.extend_from_slice(text);
                    }
                    n += 1;
                }
                n
            }
        }
    }
}

impl Records {
    fn fill(&mut self, out: &mut Vec<u8>, max_msgs: u64, max_bytes: usize) -> u64 {
        let mut n = 0;
        while n < max_msgs && out.len() < max_bytes {
            if self.pos == self.data.len() {
                if self.repeat && self.count > 0 {
                    self.pos = 0;
                } else {
                    break;
                }
            }
            // Find the longest run of records that fits, then copy it in one go.
            let start = self.pos;
            let room = max_bytes - out.len();
            let mut end = start;
            while n < max_msgs && end < self.data.len() && end - start < room {
                end += self.framing.record_len(&self.data, end);
                n += 1;
            }
            out.extend_from_slice(&self.data[start..end]);
            self.pos = end;
        }
        n
    }

    fn exhausted(&self) -> bool {
        !self.repeat && self.pos == self.data.len()
    }
}

/// Text file: every non-empty line (without `\n` or `\r\n`) becomes one length-prefixed record.
fn append_text(data: &mut Vec<u8>, bytes: &[u8], path: &Path) -> Result<u64, String> {
    data.reserve(bytes.len() + bytes.len() / 8);
    let mut count = 0;
    for line in bytes.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let len = u32::try_from(line.len())
            .map_err(|_| format!("{}: a line is longer than 4 GiB", path.display()))?;
        data.extend_from_slice(&len.to_be_bytes());
        data.extend_from_slice(line);
        count += 1;
    }
    Ok(count)
}

/// Binary file of fixed-size records: checked to be whole records, then taken as it is.
fn append_fixed(
    data: &mut Vec<u8>,
    bytes: Vec<u8>,
    size: usize,
    path: &Path,
) -> Result<u64, String> {
    if bytes.len() % size != 0 {
        return Err(format!(
            "{}: {} bytes is not a whole number of {size}-byte records",
            path.display(),
            bytes.len()
        ));
    }
    let count = (bytes.len() / size) as u64;
    append(data, bytes);
    Ok(count)
}

/// Binary file of `[u32 BE len][payload]` records: checked to be whole records, then taken as it
/// is (re-framing a record identically gives the same bytes).
fn append_framed(data: &mut Vec<u8>, bytes: Vec<u8>, path: &Path) -> Result<u64, String> {
    let mut pos = 0;
    let mut count = 0;
    while pos < bytes.len() {
        if bytes.len() - pos < 4 {
            return Err(format!(
                "{}: truncated record header at byte {pos}",
                path.display()
            ));
        }
        let len = be_u32(&bytes[pos..]) as usize;
        if bytes.len() - pos - 4 < len {
            return Err(format!(
                "{}: the record at byte {pos} says {len} bytes but the file ends first",
                path.display()
            ));
        }
        pos += 4 + len;
        count += 1;
    }
    append(data, bytes);
    Ok(count)
}

/// Appends a file's bytes; the first file becomes the buffer without a copy.
fn append(data: &mut Vec<u8>, bytes: Vec<u8>) {
    if data.is_empty() {
        *data = bytes;
    } else {
        data.extend_from_slice(&bytes);
    }
}

/// Writes the decimal digits of `v` into `buf` without allocating.
fn format_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME, like giles' `WallClock.nanoseconds()`).
fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The `sent.txt` log.
struct SentLog {
    out: BufWriter<File>,
    path: PathBuf,
}

impl SentLog {
    fn create(path: &Path) -> Result<SentLog, String> {
        let file = File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(SentLog {
            out: BufWriter::with_capacity(1 << 20, file),
            path: path.to_owned(),
        })
    }

    /// One line per message of `batch`, all with the batch's timestamp.
    fn log_batch(&mut self, ts_ns: u64, batch: &[u8], framing: Framing) -> Result<(), String> {
        let mut digits = [0u8; 20];
        let stamp = format_u64(ts_ns, &mut digits);
        let mut pos = 0;
        let mut write = || -> std::io::Result<()> {
            while pos < batch.len() {
                let end = pos + framing.record_len(batch, pos);
                self.out.write_all(stamp)?;
                self.out.write_all(b", ")?;
                self.out.write_all(&batch[pos + 4..end])?;
                self.out.write_all(b"\n")?;
                pos = end;
            }
            Ok(())
        };
        write().map_err(|e| format!("writing {}: {e}", self.path.display()))
    }

    fn finish(mut self) -> Result<(), String> {
        self.out
            .flush()
            .map_err(|e| format!("writing {}: {e}", self.path.display()))
    }
}

/// Waits until `deadline`: sleeps most of the way, then polls the clock for the last stretch,
/// yielding the core between looks.
///
/// Yielding, not spinning: a paced stream is always in that last stretch (a batch every 100 µs,
/// `bench::pacing`), and a spinning sender kept its core until the scheduler's next tick (4 ms
/// here, `CONFIG_HZ=250`) even when a shard pinned to that core had been woken by the data just
/// sent. `bettong bench market-spread --shards 2 --rate 200000 --messages 400000 --poll park`
/// on this 2-core machine, 4 alternating rounds: p99 3.88–4.05 ms with `spin_loop`, 90–168 µs
/// with `yield_now`; p99.9 4.55–4.88 ms against 0.67–1.18 ms; the rate held (199.5 k msgs/s).
/// With a core to spare a yield returns at once, so the pace stays as exact.
fn wait_until(deadline: Instant) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if left > POLL_WINDOW * 2 {
            std::thread::sleep(left - POLL_WINDOW);
        } else {
            std::thread::yield_now();
        }
    }
}

/// Paced mode: batch `k` is due at `start + k × interval`. A late batch is sent at once and the
/// schedule is kept, so the sender catches up instead of skipping.
fn paced(
    mut source: Source,
    link: &mut Link<'_>,
    limits: Limits,
    args: &SendArgs,
    mut log: Option<SentLog>,
) -> Result<SendReport, String> {
    let interval = Duration::from_nanos(args.interval);
    let framing = source.framing();
    let mut batch = Vec::with_capacity(args.batch_size.saturating_mul(64).min(64 << 20));
    let mut messages = 0u64;
    let mut bytes = 0u64;
    let mut batches = 0u64;
    let mut late_batches = 0u64;
    let mut max_behind = Duration::ZERO;
    let mut final_behind = Duration::ZERO;
    let mut data_ran_out = false;
    let start = Instant::now();
    let due = |k: u64| Duration::from_nanos(args.interval.saturating_mul(k));

    while messages < limits.messages {
        let offset = due(batches);
        if limits.duration.is_some_and(|d| offset >= d) {
            break;
        }
        let deadline = start + offset;
        wait_until(deadline);
        let now = Instant::now();
        if limits.duration.is_some_and(|d| now - start >= d) {
            break;
        }
        let behind = now - deadline;
        max_behind = max_behind.max(behind);
        final_behind = behind;
        if behind >= interval {
            late_batches += 1;
        }

        batch.clear();
        let want = (args.batch_size as u64).min(limits.messages - messages);
        let n = source.fill(&mut batch, want, usize::MAX);
        if n == 0 {
            data_ran_out = true;
            break;
        }
        let ts = wall_ns();
        link.write(&batch)?;
        if let Some(log) = log.as_mut() {
            log.log_batch(ts, &batch, framing)?;
        }
        messages += n;
        bytes += batch.len() as u64;
        batches += 1;
        link.progress.show(messages);
        if let Source::Records(r) = &source {
            if r.exhausted() && messages < limits.messages {
                data_ran_out = true;
                break;
            }
        }
    }
    // The last batch owns a whole interval: a run of k batches on schedule takes k intervals, so
    // the achieved rate equals the offered one when the sender kept up.
    if batches > 0 {
        let end = start + due(batches);
        let end = match limits.duration {
            Some(d) => end.min(start + d),
            None => end,
        };
        wait_until(end);
    }
    let elapsed = start.elapsed();
    if let Some(log) = log {
        log.finish()?;
    }
    Ok(SendReport {
        messages,
        bytes,
        elapsed,
        connections: link.conns.len(),
        pacing: Some(PacingReport {
            batch_size: args.batch_size,
            interval,
            batches,
            late_batches,
            max_behind,
            final_behind,
        }),
        data_ran_out,
    })
}

/// A slice of the blast buffer that one write sends.
struct Chunk {
    start: usize,
    end: usize,
    messages: u64,
}

/// What blast mode writes: the records repeated into one buffer cut into chunks of whole
/// records, or generated counters.
enum BlastFeed {
    Records {
        framing: Framing,
        buffer: Vec<u8>,
        chunks: Vec<Chunk>,
    },
    Counter(Source),
}

impl BlastFeed {
    fn new(source: Source) -> BlastFeed {
        match source {
            Source::Records(records) => {
                let framing = records.framing;
                let (buffer, chunks) = blast_buffer(records);
                BlastFeed::Records {
                    framing,
                    buffer,
                    chunks,
                }
            }
            counter @ Source::Counter { .. } => BlastFeed::Counter(counter),
        }
    }
}

/// Blast mode: unpaced, large writes, looping over the data until a limit is reached.
fn blast(feed: BlastFeed, link: &mut Link<'_>, limits: Limits) -> Result<SendReport, String> {
    let connections = link.conns.len();
    let start = Instant::now();
    let timed_out = |now: Instant| limits.duration.is_some_and(|d| now - start >= d);
    let mut messages = 0u64;
    let mut bytes = 0u64;

    match feed {
        BlastFeed::Records {
            framing,
            buffer,
            chunks,
        } => {
            let mut i = 0;
            while messages < limits.messages && !timed_out(Instant::now()) {
                let chunk = &chunks[i];
                i = (i + 1) % chunks.len();
                let left = limits.messages - messages;
                let (end, n) = if chunk.messages <= left {
                    (chunk.end, chunk.messages)
                } else {
                    // The final, partial chunk: walk its records up to the limit.
                    let mut end = chunk.start;
                    for _ in 0..left {
                        end += framing.record_len(&buffer, end);
                    }
                    (end, left)
                };
                link.write(&buffer[chunk.start..end])?;
                messages += n;
                link.progress.show(messages);
                bytes += (end - chunk.start) as u64;
            }
        }
        BlastFeed::Counter(mut counter) => {
            let mut batch = Vec::with_capacity(BLAST_WRITE_BYTES + 64);
            while messages < limits.messages && !timed_out(Instant::now()) {
                batch.clear();
                let n = counter.fill(&mut batch, limits.messages - messages, BLAST_WRITE_BYTES);
                link.write(&batch)?;
                messages += n;
                link.progress.show(messages);
                bytes += batch.len() as u64;
            }
        }
    }
    Ok(SendReport {
        messages,
        bytes,
        elapsed: start.elapsed(),
        connections,
        pacing: None,
        data_ran_out: false,
    })
}

/// Repeats the records until the buffer is [`BLAST_BUFFER_BYTES`] long, and cuts it into chunks
/// of whole records of about [`BLAST_WRITE_BYTES`] each. Because the buffer holds whole copies of
/// the data, going from its last chunk back to its first continues the data seamlessly.
fn blast_buffer(records: Records) -> (Vec<u8>, Vec<Chunk>) {
    let framing = records.framing;
    let one = records.data.len().max(1);
    let copies = BLAST_BUFFER_BYTES.div_ceil(one).max(1);
    // Data as large as the buffer is taken as it is, not copied: market-spread files run to
    // hundreds of megabytes.
    let buffer = if copies == 1 {
        records.data
    } else {
        records.data.repeat(copies)
    };
    let mut chunks = Vec::new();
    let mut pos = 0;
    while pos < buffer.len() {
        let start = pos;
        let mut messages = 0;
        while pos < buffer.len() && pos - start < BLAST_WRITE_BYTES {
            pos += framing.record_len(&buffer, pos);
            messages += 1;
        }
        chunks.push(Chunk {
            start,
            end: pos,
            messages,
        });
    }
    (buffer, chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(data: Vec<u8>, framing: Framing, count: u64, repeat: bool) -> Records {
        Records {
            data,
            framing,
            count,
            pos: 0,
            repeat,
        }
    }

    #[test]
    fn decimal_formatting_matches_std() {
        let mut buf = [0u8; 20];
        for v in [0, 7, 10, 99, 1234567890, u64::MAX] {
            assert_eq!(format_u64(v, &mut buf), v.to_string().as_bytes());
        }
    }

    #[test]
    fn text_lines_are_framed_and_empty_ones_skipped() {
        let mut data = Vec::new();
        let n = append_text(&mut data, b"ab\n\nc\r\n\nlast", Path::new("t")).unwrap();
        assert_eq!(n, 3);
        assert_eq!(data, b"\0\0\0\x02ab\0\0\0\x01c\0\0\0\x04last");
    }

    #[test]
    fn malformed_binary_files_are_refused() {
        let mut data = Vec::new();
        assert!(append_fixed(&mut data, vec![0; 10], 4, Path::new("f")).is_err());
        assert!(append_framed(&mut data, vec![0, 0, 0, 5, 1, 2], Path::new("f")).is_err());
        assert!(append_framed(&mut data, vec![0, 0], Path::new("f")).is_err());
        assert_eq!(
            append_framed(&mut data, vec![0, 0, 0, 1, 9, 0, 0, 0, 0], Path::new("f")),
            Ok(2)
        );
        // A second file goes after the first.
        assert_eq!(
            append_fixed(&mut data, vec![7; 4], 4, Path::new("g")),
            Ok(1)
        );
        assert_eq!(data, [0, 0, 0, 1, 9, 0, 0, 0, 0, 7, 7, 7, 7]);
    }

    #[test]
    fn fill_wraps_only_with_repeat() {
        let data = vec![1, 2, 3, 4, 5, 6];
        let mut once = records(data.clone(), Framing::Fixed(2), 3, false);
        let mut out = Vec::new();
        assert_eq!(once.fill(&mut out, 5, usize::MAX), 3);
        assert!(once.exhausted());
        let mut looped = records(data, Framing::Fixed(2), 3, true);
        out.clear();
        assert_eq!(looped.fill(&mut out, 5, usize::MAX), 5);
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 1, 2, 3, 4]);
    }

    #[test]
    fn counters_start_after_start_from() {
        let mut text = Source::Counter {
            next: 9,
            binary: false,
        };
        let mut out = Vec::new();
        assert_eq!(text.fill(&mut out, 2, usize::MAX), 2);
        assert_eq!(out, b"\0\0\0\x0210\0\0\0\x0211");
        let mut bin = Source::Counter {
            next: 0,
            binary: true,
        };
        out.clear();
        bin.fill(&mut out, 1, usize::MAX);
        assert_eq!(out, [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn blast_chunks_cover_whole_records() {
        let mut data = Vec::new();
        append_text(&mut data, b"x\nyy\nzzz\n", Path::new("t")).unwrap();
        let r = records(data.clone(), Framing::LengthPrefixed, 3, true);
        let (buffer, chunks) = blast_buffer(r);
        assert_eq!(buffer.len() % data.len(), 0);
        assert!(buffer.len() >= BLAST_BUFFER_BYTES);
        let mut pos = 0;
        let mut total = 0;
        for c in &chunks {
            assert_eq!(c.start, pos);
            pos = c.end;
            total += c.messages;
        }
        assert_eq!(pos, buffer.len());
        assert_eq!(total, 3 * (buffer.len() / data.len()) as u64);
    }

    #[test]
    fn sent_log_lines_hold_payloads() {
        let path = std::env::temp_dir().join(format!("bettong-sentlog-{}", std::process::id()));
        let mut log = SentLog::create(&path).unwrap();
        log.log_batch(42, b"\0\0\0\x02ab\0\0\0\x00", Framing::LengthPrefixed)
            .unwrap();
        log.log_batch(43, b"\0\0\0\x02xy\0\0\0\x02zw", Framing::Fixed(6))
            .unwrap();
        log.finish().unwrap();
        let text = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(text, b"42, ab\n42, \n43, xy\n43, zw\n");
    }

    #[test]
    fn hand_built_args_are_checked() {
        let mut a = SendArgs::new("127.0.0.1:1", 1);
        assert!(a.validate().is_ok());
        a.binary = true;
        a.file = vec![PathBuf::from("x")];
        assert!(a.validate().is_err());
        a.msg_size = Some(3);
        assert!(a.validate().is_err());
        a.msg_size = Some(46);
        assert!(a.validate().is_ok());
        a.messages = None;
        assert!(a.validate().is_err());
    }
}
