//! Test harness: runs the real `bettong` binary, a sink that records what the engine writes,
//! and framed senders, all over TCP on 127.0.0.1.
#![allow(dead_code)]

pub mod capture;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any wait in a test may take before the test fails with a message.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A running `bettong` process.
pub struct Engine {
    child: Child,
    /// Each source's name and real address, from the `ready` line.
    pub sources: Vec<(String, SocketAddr)>,
    /// The lines printed before `ready`.
    pub preamble: Vec<String>,
    stderr_lines: Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts `bettong ARGS` and waits for its `ready` line.
    pub fn start(args: &[&str]) -> Engine {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bettong"));
        cmd.args(args);
        Engine::start_command(cmd)
    }

    /// Starts `cmd` (a `bettong` command, set up by the caller: arguments, limits) and waits
    /// for its `ready` line.
    pub fn start_command(mut cmd: Command) -> Engine {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bettong");
        let (tx, rx) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let all = stderr.clone();
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                all.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut preamble = Vec::new();
        let ready = loop {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                let status = child.wait().unwrap();
                let _ = stderr_thread.join();
                panic!(
                    "bettong exited ({status}) before `ready`; stderr:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
            if let Some(rest) = line.trim().strip_prefix("ready ") {
                break rest.to_string();
            }
            preamble.push(line.trim().to_string());
        };
        let sources = ready
            .split_whitespace()
            .map(|s| {
                let (name, addr) = s.rsplit_once('@').unwrap();
                (name.to_string(), addr.parse().unwrap())
            })
            .collect();
        Engine {
            child,
            sources,
            preamble,
            stderr_lines: rx,
            stderr,
            stderr_thread: Some(stderr_thread),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address of the source called `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.sources
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no source {name} in {:?}", self.sources))
            .1
    }

    /// Waits until stderr has a line containing `needle`.
    pub fn wait_for_stderr(&self, needle: &str) {
        let until = Instant::now() + DEADLINE;
        if self
            .stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
        {
            return;
        }
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "no stderr line with {needle:?}; stderr so far:\n{}",
                    self.stderr.lock().unwrap().join("\n")
                ),
            }
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status and whole stderr.
    pub fn stop(self) -> (ExitStatus, String) {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// Sends `signal` and waits for the process to exit; returns its status and whole stderr.
    pub fn signal_and_wait(mut self, signal: i32) -> (ExitStatus, String) {
        // SAFETY: sending a signal to our own child process, which has not been reaped.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = wait_with_deadline(&mut self.child);
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let err = self.stderr.lock().unwrap().join("\n");
        (status, err)
    }
}

impl Engine {
    /// Sends SIGTERM and waits at most `bound` for the process to exit; returns its status,
    /// how long the exit took and the whole stderr. Fails the test (after killing the
    /// process) if it is still running after `bound`.
    pub fn terminate_within(mut self, bound: Duration) -> (ExitStatus, Duration, String) {
        let start = Instant::now();
        // SAFETY: sending a signal to our own child process, which has not been reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > bound {
                let _ = self.child.kill();
                let _ = self.child.wait();
                if let Some(t) = self.stderr_thread.take() {
                    let _ = t.join();
                }
                panic!(
                    "bettong still running {bound:?} after SIGTERM; stderr:\n{}",
                    self.stderr.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = start.elapsed();
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let err = self.stderr.lock().unwrap().join("\n");
        (status, took, err)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_with_deadline(child: &mut Child) -> ExitStatus {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < until, "bettong did not exit in time");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The bytes received on each connection so far.
type Received = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A TCP sink that accepts any number of connections and records each one's bytes.
pub struct Sink {
    pub addr: SocketAddr,
    conns: Received,
    readers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Peer addresses of the connections accepted so far.
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    _acceptor: JoinHandle<()>,
}

impl Sink {
    /// Listens on a free port of 127.0.0.1.
    pub fn bind() -> Sink {
        Sink::on(TcpListener::bind("127.0.0.1:0").unwrap(), 0)
    }

    /// Records connections accepted on `listener`; each reader waits `pause_us` between reads.
    pub fn on(listener: TcpListener, pause_us: u64) -> Sink {
        let addr = listener.local_addr().unwrap();
        let conns: Received = Arc::default();
        let readers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let peers: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let (c, r, p) = (conns.clone(), readers.clone(), peers.clone());
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let peer = stream.peer_addr().ok();
                let buf = Arc::new(Mutex::new(Vec::new()));
                c.lock().unwrap().push(buf.clone());
                r.lock().unwrap().push(std::thread::spawn(move || {
                    let mut chunk = vec![0u8; 64 * 1024];
                    loop {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                        }
                        if pause_us > 0 {
                            std::thread::sleep(Duration::from_micros(pause_us));
                        }
                    }
                }));
                p.lock().unwrap().extend(peer);
            }
        });
        Sink {
            addr,
            conns,
            readers,
            peers,
            _acceptor: acceptor,
        }
    }

    /// The bytes of every connection, once the engine has closed them all.
    ///
    /// A connection the engine made may still wait in the listen queue: the acceptor takes
    /// connections in order, so once it has taken a connection of our own made now, it has
    /// taken every earlier one too.
    pub fn finish(self) -> Vec<Vec<u8>> {
        let marker = TcpStream::connect(self.addr).unwrap();
        let me = marker.local_addr().unwrap();
        let until = Instant::now() + DEADLINE;
        while !self.peers.lock().unwrap().contains(&me) {
            assert!(Instant::now() < until, "the sink's acceptor is stuck");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(marker);
        let readers: Vec<_> = self.readers.lock().unwrap().drain(..).collect();
        for r in readers {
            r.join().unwrap();
        }
        let peers = self.peers.lock().unwrap();
        self.conns
            .lock()
            .unwrap()
            .iter()
            .zip(peers.iter())
            .filter(|(_, peer)| **peer != me)
            .map(|(b, _)| b.lock().unwrap().clone())
            .collect()
    }

    /// Connections the engine has opened to this sink so far.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// The bytes received so far, every connection's one after another.
    #[allow(dead_code)]
    pub fn contents(&self) -> Vec<u8> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.lock().unwrap().clone())
            .collect()
    }

    /// Total bytes received so far.
    pub fn bytes(&self) -> usize {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.lock().unwrap().len())
            .sum()
    }
}

/// Splits a byte stream into frame payloads; panics if it does not end on a frame boundary.
pub fn payloads(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 4, "torn header at the end of the stream");
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        assert!(
            bytes.len() >= 4 + len,
            "torn frame at the end of the stream"
        );
        out.push(bytes[4..4 + len].to_vec());
        bytes = &bytes[4 + len..];
    }
    out
}

/// A process's resident memory in KiB (VmRSS in /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// How many file descriptors a process has open (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits (up to [`DEADLINE`]) until `done` returns true, checking every millisecond.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `[u32 BE len][payload]`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + payload.len());
    bettong::codec::write_frame(&mut f, payload);
    f
}

/// Connects to `addr`, writes `bytes`, and closes the connection.
pub fn send(addr: SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
}

/// The engine's summary counter called `label` (e.g. "messages in", "decode").
pub fn summary_count(stderr: &str, label: &str) -> u64 {
    for line in stderr.lines() {
        for part in line.split([',', ':']) {
            let part = part.trim();
            if let Some(v) = part.strip_prefix(label) {
                if let Ok(n) = v.trim().parse() {
                    return n;
                }
            }
        }
    }
    panic!("no `{label}` count in stderr:\n{stderr}")
}

/// Waits until an in-process engine has finished `n` messages (output or filtered).
pub fn wait_finished(engine: &bettong::Engine, n: u64) {
    let until = Instant::now() + DEADLINE;
    while engine.progress().finished < n {
        assert!(Instant::now() < until, "engine did not finish {n} messages");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An OrderResult without its timestamp, which is the only field a model cannot predict.
/// Floats are compared by their bits: the engine must pass them through untouched.
pub type ResultKey = (u8, u32, [u8; 6], [u8; 4], u64, u64, u64, u64);

/// The [`ResultKey`] of an OrderResult.
pub fn result_key(r: &bettong_apps::market_spread::OrderResult) -> ResultKey {
    (
        r.side,
        r.account,
        r.order_id,
        r.symbol,
        r.qty.to_bits(),
        r.price.to_bits(),
        r.bid.to_bits(),
        r.offer.to_bits(),
    )
}

/// The newest complete checkpoint's id in a `--resilience-dir` (0 for none): a checkpoint is
/// complete once its manifest is written.
pub fn newest_checkpoint(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("MANIFEST").is_file())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.trim_start_matches("chk-").parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0)
}

/// Word count's output (`word => n` lines): every word of `model` has the counts 1..n, each
/// once — nothing missing, nothing repeated.
pub fn check_word_counts(text: &str, model: &std::collections::HashMap<String, u64>, what: &str) {
    let mut seen: std::collections::HashMap<&str, Vec<u64>> = std::collections::HashMap::new();
    for line in text.lines() {
        let (w, n) = line
            .split_once(" => ")
            .unwrap_or_else(|| panic!("{what}: a torn line {line:?}"));
        seen.entry(w).or_default().push(n.parse().unwrap());
    }
    assert_eq!(seen.len(), model.len(), "{what}: words");
    for (w, mut counts) in seen {
        counts.sort_unstable();
        let n = model[w];
        if counts != (1..=n).collect::<Vec<u64>>() {
            let dup = counts.windows(2).filter(|p| p[0] == p[1]).count();
            panic!(
                "{what}: `{w}` has {} outputs for {n} occurrences ({dup} repeated)",
                counts.len()
            );
        }
    }
}

/// A small deterministic generator (the same kill moments on every run of a test).
pub struct Lcg(pub u64);

impl Lcg {
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Makes the process `cmd` starts die with the thread that starts it (SIGKILL when that thread
/// ends): a crash test that fails half-way through its kill-and-restart loop must not leave an
/// engine running, reconnecting to ports that later tests are given (it happened: an orphaned
/// 2PC sink connection reached another test's sink).
pub fn dies_with_test(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed; prctl(PR_SET_PDEATHSIG) is one (a plain system call
    // that touches no memory of ours).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}
