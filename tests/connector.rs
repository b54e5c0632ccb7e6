//! The Wallaroo connector protocol through the real binary: a connector source
//! (`--in NAME@HOST:PORT:COOKIE:MAX_CREDITS:REFILL_CREDITS`) fed by a connector written here,
//! and a two-phase-commit sink (`--out 2pc:HOST:PORT`) written here too, byte by byte from
//! `../shared/reference/connector-protocol.md` (nothing is shared with the engine's codec, so a
//! misreading on one side is not mirrored on the other).
//!
//! The crash tests kill word count with SIGKILL at arbitrary moments, at least 10 times, and
//! restart it with the same command line; the connectors reconnect and resend from the points
//! of reference the engine gives back, the sink resolves its transactions. At the end every
//! word's counts at the sink are exactly 1..n, once each.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Engine, Sink, DEADLINE};

const NONE: u64 = u64::MAX;
const COOKIE: &str = "Dragons-Love-Tacos";

// ---------------------------------------------------------------------------------------------
// The wire, written from the reference: [u32 BE len][u8 tag][body].

fn short(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(tag);
    out.extend_from_slice(body);
    out
}

fn hello(version: &str, cookie: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for s in [version, cookie, "test", "feed"] {
        short(&mut b, s);
    }
    framed(0, &b)
}

fn notify(stream: u64, name: &str, por: u64) -> Vec<u8> {
    let mut b = stream.to_be_bytes().to_vec();
    short(&mut b, name);
    b.extend_from_slice(&por.to_be_bytes());
    framed(3, &b)
}

fn message(stream: u64, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = stream.to_be_bytes().to_vec();
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes()); // no key
    b.extend_from_slice(payload);
    framed(5, &b)
}

fn eos(stream: u64) -> Vec<u8> {
    framed(8, &stream.to_be_bytes())
}

/// A frame as the tests read it.
#[derive(Debug, Clone, PartialEq)]
enum In {
    Ok(u32),
    Error(String),
    NotifyAck(bool, u64, u64),
    Ack(u32, Vec<(u64, u64)>),
    Restart(String),
    Other(u8, Vec<u8>),
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    fn short(&mut self) -> String {
        let n = self.u16() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
}

fn parse(tag: u8, body: &[u8]) -> In {
    let mut c = Cursor(body);
    match tag {
        1 => In::Ok(c.u32()),
        2 => In::Error(c.short()),
        4 => In::NotifyAck(c.u8() != 0, c.u64(), c.u64()),
        6 => {
            let credits = c.u32();
            let n = c.u32();
            In::Ack(credits, (0..n).map(|_| (c.u64(), c.u64())).collect())
        }
        7 => {
            let n = c.u32() as usize;
            In::Restart(String::from_utf8(c.take(n).to_vec()).unwrap())
        }
        t => In::Other(t, body.to_vec()),
    }
}

/// Reads one frame: `(tag, body)`, or `None` at the end of the connection.
fn read_frame(s: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut len = [0; 4];
    s.read_exact(&mut len).ok()?;
    let mut payload = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload).ok()?;
    let tag = *payload.first()?;
    Some((tag, payload[1..].to_vec()))
}

fn read_in(s: &mut impl Read) -> Option<In> {
    read_frame(s).map(|(t, b)| parse(t, &b))
}

// ---------------------------------------------------------------------------------------------
// A connector: streams of text lines, resent from the engine's point of reference after every
// reconnect, until each stream's end is acknowledged.

struct Stream {
    id: u64,
    name: String,
    /// The payloads, message id = index.
    lines: Vec<Vec<u8>>,
    /// The engine's last acknowledged point of reference.
    acked: u64,
    done: bool,
}

/// Feeds `streams` to the connector source at `addr` from a thread, reconnecting whenever the
/// engine goes away, at most `rate` messages per millisecond. Returns when every stream's end
/// is acknowledged or `quit` is set; the result says how many connections it made.
fn feed(
    addr: SocketAddr,
    mut streams: Vec<Stream>,
    rate: usize,
    quit: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut connections = 0;
        while !streams.iter().all(|s| s.done) && !quit.load(Ordering::Relaxed) {
            let Ok(conn) = TcpStream::connect(addr) else {
                // The engine is between runs: try again.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            connections += 1;
            session(conn, &mut streams, rate, &quit);
        }
        connections
    })
}

/// One connection of the feed; returns when it ends.
fn session(mut conn: TcpStream, streams: &mut [Stream], rate: usize, quit: &AtomicBool) {
    let _ = conn.set_nodelay(true);
    let (tx, rx) = mpsc::channel::<In>();
    let mut reader = conn.try_clone().unwrap();
    std::thread::spawn(move || {
        while let Some(f) = read_in(&mut reader) {
            if tx.send(f).is_err() {
                break;
            }
        }
    });
    if conn.write_all(&hello("0.0.1", COOKIE)).is_err() {
        return;
    }
    let Ok(In::Ok(mut credits)) = rx.recv_timeout(DEADLINE) else {
        return;
    };
    // Per stream: whether the engine gave it to us, and the next line to send.
    let mut active: HashMap<u64, usize> = HashMap::new();
    let mut pending_notify: Vec<usize> = (0..streams.len()).filter(|&i| !streams[i].done).collect();
    let mut eos_sent: HashMap<u64, bool> = HashMap::new();
    loop {
        if quit.load(Ordering::Relaxed) || streams.iter().all(|s| s.done) {
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        // Notify what is not active yet, one credit each.
        for i in std::mem::take(&mut pending_notify) {
            let s = &streams[i];
            if credits == 0 {
                pending_notify.push(i);
                continue;
            }
            credits -= 1;
            if conn.write_all(&notify(s.id, &s.name, s.acked)).is_err() {
                return;
            }
            match rx.recv_timeout(DEADLINE) {
                Ok(In::NotifyAck(true, id, por)) if id == s.id => {
                    // Resend from the point of reference itself: the engine drops it.
                    let next = if por == NONE { 0 } else { por as usize };
                    active.insert(s.id, next);
                }
                Ok(In::NotifyAck(false, _, _)) => {} // held elsewhere: ask again after an Ack
                _ => return,
            }
        }
        // Send up to `rate` messages, round robin over the active streams.
        let mut sent = 0;
        let mut out = Vec::new();
        for s in streams.iter_mut() {
            let Some(next) = active.get_mut(&s.id) else {
                continue;
            };
            while *next < s.lines.len() && credits > 0 && sent < rate {
                out.extend_from_slice(&message(s.id, *next as u64, &s.lines[*next]));
                *next += 1;
                credits -= 1;
                sent += 1;
            }
            if *next == s.lines.len() && !eos_sent.get(&s.id).copied().unwrap_or(false) {
                out.extend_from_slice(&eos(s.id));
                eos_sent.insert(s.id, true);
            }
        }
        if !out.is_empty() && conn.write_all(&out).is_err() {
            return;
        }
        // Take what the engine says; wait for it when out of credits or done sending.
        let idle = credits == 0 || sent == 0;
        let mut handle = |f: In, credits: &mut u32, pending: &mut Vec<usize>| -> bool {
            match f {
                In::Ack(c, acks) => {
                    *credits += c;
                    for (id, por) in acks {
                        if let Some(s) = streams.iter_mut().find(|s| s.id == id) {
                            s.acked = por;
                            if por == s.lines.len() as u64 - 1
                                && eos_sent.get(&id).copied().unwrap_or(false)
                            {
                                s.done = true;
                            }
                        }
                    }
                    for (i, s) in streams.iter().enumerate() {
                        if !s.done && !active.contains_key(&s.id) && !pending.contains(&i) {
                            pending.push(i);
                        }
                    }
                    true
                }
                In::Restart(_) | In::Error(_) => false,
                _ => false,
            }
        };
        if idle {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(f) => {
                    if !handle(f, &mut credits, &mut pending_notify) {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(f) => {
                    if !handle(f, &mut credits, &mut pending_notify) {
                        return;
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(_) => return,
            }
        }
        if !idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A two-phase-commit sink, after Wallaroo's `aloc_sink`: one output per instance (shard), a
// transaction log in memory (it outlives every engine run), and the checks that make a lost or
// repeated byte visible.

#[derive(Default)]
struct Instance {
    out: Vec<u8>,
    committed: u64,
    /// The transaction voted for and not yet resolved: (name, start, end).
    voted: Option<(String, u64, u64)>,
    /// Bumped by each new connection; frames of an older one are ignored.
    generation: u64,
    gap: bool,
}

#[derive(Default)]
struct TwoPcState {
    instances: HashMap<String, Instance>,
    /// Anything that broke the protocol's promises.
    faults: Vec<String>,
    commits: u64,
    aborts: u64,
    /// Close connections after this many frames (0: never), to play a sink that goes away: an
    /// instance's connection after its k-th cut lasts `drop_after × (k + 1)` frames. Why grow:
    /// a transaction longer than a connection's life could never get through, and in a release
    /// build the whole test input is read before the first checkpoint (20 ms), so the final
    /// transaction holds every output (about 13 frames of 64 KiB per shard): with a fixed 12 the
    /// engine resent it forever (nothing lost or repeated, but never done).
    drop_after: usize,
    drops: u64,
    /// Cuts so far, by instance.
    cuts: HashMap<String, usize>,
}

struct TwoPcSink {
    addr: SocketAddr,
    state: Arc<Mutex<TwoPcState>>,
}

impl TwoPcSink {
    fn start() -> TwoPcSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(TwoPcState::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let st = st.clone();
                std::thread::spawn(move || twopc_connection(conn, &st));
            }
        });
        TwoPcSink { addr, state }
    }

    /// Every instance's output, in instance order.
    fn output(&self) -> String {
        let st = self.state.lock().unwrap();
        let mut names: Vec<&String> = st.instances.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|n| String::from_utf8(st.instances[n].out.clone()).unwrap())
            .collect()
    }

    /// Every instance's output bytes, in instance order.
    fn output_bytes(&self) -> Vec<u8> {
        let st = self.state.lock().unwrap();
        let mut names: Vec<&String> = st.instances.keys().collect();
        names.sort();
        names
            .into_iter()
            .flat_map(|n| st.instances[n].out.clone())
            .collect()
    }

    fn bytes(&self) -> usize {
        let st = self.state.lock().unwrap();
        st.instances.values().map(|i| i.out.len()).sum()
    }

    fn lines(&self) -> usize {
        let st = self.state.lock().unwrap();
        st.instances
            .values()
            .map(|i| i.out.iter().filter(|&&b| b == b'\n').count())
            .sum()
    }
}

fn twopc_message(payload: &[u8]) -> Vec<u8> {
    message(0, 0, payload)
}

fn twopc_connection(mut conn: TcpStream, state: &Mutex<TwoPcState>) {
    let fault = |st: &mut TwoPcState, f: String| st.faults.push(f);
    // Hello, Notify, ListUncommitted.
    let Some((0, body)) = read_frame(&mut conn) else {
        return;
    };
    let mut c = Cursor(&body);
    let (version, cookie, _program, instance) = (c.short(), c.short(), c.short(), c.short());
    if version != "v0.0.1" || cookie != COOKIE {
        let mut b = Vec::new();
        short(&mut b, "bad hello");
        let _ = conn.write_all(&framed(2, &b));
        state
            .lock()
            .unwrap()
            .faults
            .push(format!("hello {version} {cookie}"));
        return;
    }
    let Some((3, _notify)) = read_frame(&mut conn) else {
        return;
    };
    let Some((5, list)) = read_frame(&mut conn) else {
        return;
    };
    let (generation, listed, offset) = {
        let mut st = state.lock().unwrap();
        let inst = st.instances.entry(instance.clone()).or_default();
        inst.generation += 1;
        // A new connection: whatever came after the last transaction is dropped.
        let keep = inst.voted.as_ref().map_or(inst.committed, |v| v.2);
        inst.out.truncate(keep as usize);
        inst.gap = false;
        let listed: Vec<String> = inst.voted.iter().map(|v| v.0.clone()).collect();
        (inst.generation, listed, inst.out.len() as u64)
    };
    // The ListUncommitted payload: [201][u64 rtag], after the Message header (26 bytes).
    let rtag = u64::from_be_bytes(list[27..35].try_into().unwrap());
    assert_eq!(list[26], 201, "ListUncommitted");
    let mut reply = framed(1, &500u32.to_be_bytes());
    let mut ack = vec![1];
    ack.extend_from_slice(&1u64.to_be_bytes());
    ack.extend_from_slice(&offset.to_be_bytes());
    reply.extend_from_slice(&framed(4, &ack));
    let mut ru = vec![202];
    ru.extend_from_slice(&rtag.to_be_bytes());
    ru.extend_from_slice(&(listed.len() as u32).to_be_bytes());
    for t in &listed {
        short(&mut ru, t);
    }
    reply.extend_from_slice(&twopc_message(&ru));
    if conn.write_all(&reply).is_err() {
        return;
    }
    let mut frames = 0;
    let lifetime = {
        let st = state.lock().unwrap();
        st.drop_after * (st.cuts.get(&instance).copied().unwrap_or(0) + 1)
    };
    while let Some((tag, body)) = read_frame(&mut conn) {
        let mut reply = None;
        let mut guard = state.lock().unwrap();
        let st = &mut *guard;
        frames += 1;
        if lifetime > 0 && frames > lifetime {
            // Gone without a word, in the middle of whatever the engine was sending.
            st.drops += 1;
            *st.cuts.entry(instance.clone()).or_default() += 1;
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        let inst = st.instances.get_mut(&instance).unwrap();
        if inst.generation != generation {
            return; // a newer connection took over
        }
        if tag != 5 {
            let f = format!("{instance}: frame type {tag} while streaming");
            fault(st, f);
            return;
        }
        let mut c = Cursor(&body);
        let (stream, id, _t, key_len) = (c.u64(), c.u64(), c.u64(), c.u16());
        c.take(key_len as usize);
        let payload = c.0.to_vec();
        match stream {
            1 => {
                let len = inst.out.len() as u64;
                if inst.voted.is_some() {
                    let f = format!("{instance}: data between Phase 1 and Phase 2");
                    fault(st, f);
                } else if id == len {
                    inst.out.extend_from_slice(&payload);
                } else if id < len {
                    // A resend: it must be what we have.
                    let end = (id as usize + payload.len()).min(inst.out.len());
                    if inst.out[id as usize..end] != payload[..end - id as usize] {
                        let f = format!("{instance}: a resend at {id} differs");
                        fault(st, f);
                    }
                } else {
                    inst.gap = true;
                }
            }
            0 => {
                let mut p = Cursor(&payload);
                match p.u8() {
                    203 => {
                        let txn = p.short();
                        let n = p.u32();
                        let ranges: Vec<(u64, u64, u64)> =
                            (0..n).map(|_| (p.u64(), p.u64(), p.u64())).collect();
                        let ok = !inst.gap
                            && ranges.len() == 1
                            && ranges[0].1 == inst.committed
                            && ranges[0].2 == inst.out.len() as u64;
                        if ok {
                            inst.voted = Some((txn.clone(), ranges[0].1, ranges[0].2));
                        } else {
                            let f = format!(
                                "{instance}: Phase1 {txn} {ranges:?} with committed {} and {} bytes",
                                inst.committed,
                                inst.out.len()
                            );
                            fault(st, f);
                        }
                        let mut r = vec![204];
                        short(&mut r, &txn);
                        r.push(u8::from(ok));
                        reply = Some(twopc_message(&r));
                    }
                    205 => {
                        let txn = p.short();
                        let commit = p.u8() != 0;
                        match inst.voted.take() {
                            Some((name, start, end)) if name == txn => {
                                if commit {
                                    inst.committed = end;
                                    st.commits += 1;
                                } else {
                                    inst.out.truncate(start as usize);
                                    st.aborts += 1;
                                }
                            }
                            other => {
                                inst.voted = other;
                                let f = format!("{instance}: Phase2 for {txn}, not voted");
                                fault(st, f);
                            }
                        }
                    }
                    t => {
                        let f = format!("{instance}: 2PC message {t}");
                        fault(st, f);
                    }
                }
            }
            s => {
                let f = format!("{instance}: data on stream {s}");
                fault(st, f);
            }
        }
        drop(guard);
        if let Some(r) = reply {
            if conn.write_all(&r).is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// A port that is free now and that no one else in this test run is handed: below the
/// kernel's range for port 0 (`ip_local_port_range`), so an engine or sink of another test that
/// binds port 0 cannot take it while the engine under test is between runs.
fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Spread by process and a counter so parallel tests start apart.
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let span = low.saturating_sub(10_000).max(1000);
    let start = (std::process::id() as u16 % 97) * 61;
    for _ in 0..span {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low - 1 - (start.wrapping_add(k.wrapping_mul(7919)) % span);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {low}")
}

/// An empty scratch directory for test `name`.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bettong-connector-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` lines of five words each, over 1,000-odd distinct words.
fn text(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("w{} w{} alpha w{} beta", i % 97, i % 13, i % 1009))
        .collect()
}

fn word_count(source: &str, sink: &str, cores: &str, dir: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bettong"));
    cmd.args([
        "word-count",
        "--in",
        &format!("Text@{source}"),
        "--out",
        sink,
        "--cores",
        cores,
        "--no-pin",
        "--metrics-interval",
        "0",
    ]);
    if let Some(dir) = dir {
        cmd.args([
            "--resilience-dir",
            dir,
            "--time-between-checkpoints",
            "20ms",
        ]);
    }
    cmd
}

/// `lines` split into `n` streams, and the word counts they make.
fn streams(lines: &[String], n: usize) -> (Vec<Vec<Stream>>, HashMap<String, u64>) {
    let mut model: HashMap<String, u64> = HashMap::new();
    for l in lines {
        for w in bettong_apps::word_count::split(l) {
            *model.entry(w).or_default() += 1;
        }
    }
    // Two connectors with n/2 streams each.
    let mut feeds: Vec<Vec<Stream>> = vec![Vec::new(), Vec::new()];
    for k in 0..n {
        feeds[k % 2].push(Stream {
            id: 1000 + k as u64,
            name: format!("text-{k}"),
            lines: lines
                .iter()
                .skip(k)
                .step_by(n)
                .map(|l| l.as_bytes().to_vec())
                .collect(),
            acked: NONE,
            done: false,
        });
    }
    (feeds, model)
}

/// How a crash test runs the engine.
struct Restarts<'a> {
    chk: &'a std::path::Path,
    kills: u64,
    /// The cores of the killed runs, and of the last one.
    first: &'a str,
    later: &'a str,
    /// The engine's command line on the given cores.
    command: &'a dyn Fn(&str) -> Command,
    /// The last run stops by itself (file sources); else it is stopped once `complete`.
    ends_by_itself: bool,
    /// The connectors feeding it, which end once every stream's end is acknowledged.
    feeders: Vec<std::thread::JoinHandle<usize>>,
    quit: Arc<AtomicBool>,
    /// True once the sink has every output.
    complete: &'a dyn Fn() -> bool,
}

/// Kills the engine with SIGKILL `kills` times at arbitrary moments, restarting it each time
/// with the same command line, then runs it until the sink is complete (and again after the
/// stop, which sends the range of the checkpoint it gives up again). Returns how many runs
/// restored a checkpoint and how many connections the connectors made.
fn kill_and_restart(r: Restarts) -> (usize, usize) {
    let mut rng = common::Lcg(0x9e3779b97f4a7c15u64 ^ r.kills);
    let mut below = |n: u64| rng.below(n);
    let mut restored = 0;
    for k in 0..r.kills {
        let before = common::newest_checkpoint(r.chk);
        let mut child = common::dies_with_test(&mut (r.command)(r.first))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if k % 2 == 0 {
            // Just after a checkpoint committed (or while the next is in flight).
            let until = Instant::now() + DEADLINE;
            while common::newest_checkpoint(r.chk) <= before && child.try_wait().unwrap().is_none()
            {
                assert!(Instant::now() < until, "no checkpoint completed");
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(below(60)));
        } else {
            // Anywhere: before the first checkpoint, in the middle of one, after several.
            std::thread::sleep(Duration::from_millis(5 + below(250)));
        }
        let _ = child.kill(); // SIGKILL
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "run {k}: {stderr}");
        restored += usize::from(stderr.contains("restored checkpoint"));
    }
    // The last run: until every stream's end is acknowledged and the sink has every output.
    let mut last = (r.command)(r.later);
    if r.ends_by_itself {
        // It may end before it could print `ready` (the checkpoint was at the end already).
        let output = last
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        restored += usize::from(stderr.contains("restored checkpoint"));
    }
    let engine = (!r.ends_by_itself).then(|| Engine::start_command(last));
    let connections: usize = r.feeders.into_iter().map(|f| f.join().unwrap()).sum();
    let wait_complete = |when: &str| {
        let until = Instant::now() + DEADLINE;
        while !(r.complete)() {
            assert!(Instant::now() < until, "{when}, the sink is not complete");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_complete("before the stop");
    if let Some(engine) = engine {
        let (status, stderr) = engine.stop();
        assert!(status.success(), "{stderr}");
        restored += usize::from(stderr.contains("restored checkpoint"));
    }
    r.quit.store(true, Ordering::Relaxed);
    wait_complete("after the stop");
    (restored, connections)
}

/// Word count from a connector source into a 2PC sink, killed `kills` times and restarted on
/// `shards` cores, then on `later` cores to the end.
fn crash_run(name: &str, shards: &str, later: &str, kills: u64) {
    crash_run_from(name, shards, later, kills, false)
}

/// Like [`crash_run`]; with `from_file` the source replays a file of frames instead (the last
/// run stops by itself at its end).
fn crash_run_from(name: &str, shards: &str, later: &str, kills: u64, from_file: bool) {
    let dir = scratch(name);
    let chk = dir.join("checkpoints");
    let chk_s = chk.display().to_string();
    // A replay runs much faster than the paced connectors: more lines, so kills land in it.
    let n = if from_file { 60_000 } else { 16_000 };
    let lines = text(n);
    let total: usize = lines.len() * 5;
    let (feeds, model) = streams(&lines, 4);
    let sink = TwoPcSink::start();
    let out = format!("2pc:{}", sink.addr);
    let quit = Arc::new(AtomicBool::new(false));
    let (source, feeders) = if from_file {
        let path = dir.join("text.frames");
        let mut bytes = Vec::new();
        for l in &lines {
            bettong::codec::write_frame(&mut bytes, l.as_bytes());
        }
        std::fs::write(&path, bytes).unwrap();
        (format!("file:{}", path.display()), Vec::new())
    } else {
        let port = free_port();
        let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let feeders: Vec<_> = feeds
            .into_iter()
            .map(|f| feed(target, f, 6, quit.clone()))
            .collect();
        (format!("127.0.0.1:{port}:{COOKIE}:200:50"), feeders)
    };
    let (restored, connections) = kill_and_restart(Restarts {
        chk: &chk,
        kills,
        first: shards,
        later,
        command: &|cores: &str| word_count(&source, &out, cores, Some(&chk_s)),
        ends_by_itself: from_file,
        feeders,
        quit,
        complete: &|| sink.lines() >= total,
    });
    let st = sink.state.lock().unwrap();
    assert!(st.faults.is_empty(), "{name}: sink saw {:?}", st.faults);
    let (commits, aborts) = (st.commits, st.aborts);
    drop(st);
    common::check_word_counts(&sink.output(), &model, name);
    assert!(restored > 0, "{name}: no run restored a checkpoint");
    eprintln!(
        "{name}: {kills} kills, {restored} restores, {connections} connector connections, {commits} commits, {aborts} aborts"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Market Spread with both sources (Orders and Nbbo) fed by connectors and its results into
/// the 2PC sink, killed 10 times on 2 shards: the results are exactly those any correct run
/// makes, each order id once (the capture's results do not depend on how the two sources
/// interleave: `tests/common/capture.rs`).
#[test]
fn market_spread_from_connectors_to_two_phase_sink_is_exactly_once_across_kills() {
    use bettong_apps::market_spread::{OrderResult, ORDER_RESULT_FRAME_LEN};
    let dir = scratch("ms");
    let data = common::capture::write_data(&dir, 12_000, 3_000);
    let read = |p: &std::path::Path| common::payloads(&std::fs::read(p).unwrap());
    let (orders, nbbo) = (read(&data.orders), read(&data.nbbo));
    let total = orders.len() * ORDER_RESULT_FRAME_LEN;
    let sink = TwoPcSink::start();
    let out = format!("2pc:{}", sink.addr);
    let quit = Arc::new(AtomicBool::new(false));
    let (p_orders, p_nbbo) = (free_port(), free_port());
    let stream = |id: u64, name: &str, lines: Vec<Vec<u8>>| Stream {
        id,
        name: name.to_string(),
        lines,
        acked: NONE,
        done: false,
    };
    let target = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    let feeders = vec![
        feed(
            target(p_orders),
            vec![stream(1, "orders", orders)],
            5,
            quit.clone(),
        ),
        feed(
            target(p_nbbo),
            vec![stream(2, "nbbo", nbbo)],
            2,
            quit.clone(),
        ),
    ];
    let chk = dir.join("checkpoints");
    let chk_s = chk.display().to_string();
    let command = |cores: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bettong"));
        cmd.args([
            "market-spread",
            "--in",
            &format!(
                "Orders@127.0.0.1:{p_orders}:{COOKIE}:100:20,Nbbo@127.0.0.1:{p_nbbo}:{COOKIE}:100:20"
            ),
            "--out",
            &out,
            "--cores",
            cores,
            "--no-pin",
            "--metrics-interval",
            "0",
            "--resilience-dir",
            &chk_s,
            "--time-between-checkpoints",
            "20ms",
        ]);
        cmd
    };
    let (restored, connections) = kill_and_restart(Restarts {
        chk: &chk,
        kills: 10,
        first: "0,1",
        later: "0,1",
        command: &command,
        ends_by_itself: false,
        feeders,
        quit,
        complete: &|| sink.bytes() >= total,
    });
    let st = sink.state.lock().unwrap();
    assert!(st.faults.is_empty(), "sink saw {:?}", st.faults);
    drop(st);
    let mut got: Vec<common::ResultKey> = common::payloads(&sink.output_bytes())
        .iter()
        .map(|p| common::result_key(&OrderResult::decode(p).expect("an OrderResult")))
        .collect();
    got.sort_unstable();
    assert_eq!(got.len(), data.model.len(), "results");
    assert!(got == data.model, "the results differ from the model");
    assert!(restored > 0, "no run restored a checkpoint");
    eprintln!("market spread: {restored} restores, {connections} connector connections");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connector source into file sinks, killed 10 times on 2 shards: the files, cut back to
/// their checkpointed lengths at each restart, hold every word's counts exactly once.
#[test]
fn connector_to_file_sink_is_exactly_once_across_kills() {
    let dir = scratch("files");
    let lines = text(16_000);
    let total = lines.len() * 5;
    let (feeds, model) = streams(&lines, 4);
    let quit = Arc::new(AtomicBool::new(false));
    let port = free_port();
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let feeders: Vec<_> = feeds
        .into_iter()
        .map(|f| feed(target, f, 6, quit.clone()))
        .collect();
    let source = format!("127.0.0.1:{port}:{COOKIE}:200:50");
    let out = dir.join("counts.txt");
    let out_flag = format!("file:{}", out.display());
    let chk = dir.join("checkpoints");
    let chk_s = chk.display().to_string();
    let files = || {
        (0..2)
            .map(|s| std::fs::read_to_string(format!("{}.{s}", out.display())).unwrap_or_default())
            .collect::<String>()
    };
    let (restored, _) = kill_and_restart(Restarts {
        chk: &chk,
        kills: 10,
        first: "0,1",
        later: "0,1",
        command: &|cores: &str| word_count(&source, &out_flag, cores, Some(&chk_s)),
        ends_by_itself: false,
        feeders,
        quit,
        complete: &|| files().lines().count() >= total,
    });
    common::check_word_counts(&files(), &model, "files");
    assert!(restored > 0, "no run restored a checkpoint");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connector_to_two_phase_sink_is_exactly_once_across_kills_on_one_shard() {
    crash_run("one", "0", "0", 10);
}

#[test]
fn connector_to_two_phase_sink_is_exactly_once_across_kills_on_two_shards() {
    crash_run("two", "0,1", "0,1", 10);
}

/// A 2PC sink that drops the connection every 12 frames (in the middle of data, a Phase 1, a
/// vote): each shard reconnects, resolves what the sink lists, and resends from where the sink
/// is, so the output is still exactly once (3 unpinned shards).
#[test]
fn a_two_phase_sink_that_keeps_going_away_loses_nothing_and_repeats_nothing() {
    let dir = scratch("drops");
    let lines = text(120_000);
    let (_, model) = streams(&lines, 2);
    let path = dir.join("text.frames");
    let mut bytes = Vec::new();
    for l in &lines {
        bettong::codec::write_frame(&mut bytes, l.as_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    let sink = TwoPcSink::start();
    sink.state.lock().unwrap().drop_after = 12;
    let output = word_count(
        &format!("file:{}", path.display()),
        &format!("2pc:{}", sink.addr),
        "0-2",
        Some(&dir.join("checkpoints").display().to_string()),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let until = Instant::now() + DEADLINE;
    while sink.lines() < lines.len() * 5 {
        assert!(
            Instant::now() < until,
            "the sink has {} lines",
            sink.lines()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = sink.state.lock().unwrap();
    assert!(st.faults.is_empty(), "sink saw {:?}", st.faults);
    assert!(st.drops >= 3, "the sink went away {} times", st.drops);
    let drops = st.drops;
    drop(st);
    common::check_word_counts(&sink.output(), &model, "drops");
    eprintln!("drops: the sink went away {drops} times");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without checkpoints a 2PC sink would wait forever for a commit: refused at start.
#[test]
fn a_two_phase_sink_needs_checkpoints() {
    let out = word_count("127.0.0.1:0", "2pc:127.0.0.1:9", "0", None)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --resilience-dir"));
}

/// A file replay into the 2PC sink: the last run ends by itself at the end of the file (its
/// stop gives up the checkpoint in flight, and the sink's range is sent again after the abort).
#[test]
fn file_replay_to_two_phase_sink_is_exactly_once_across_kills() {
    crash_run_from("file", "0,1", "0,1", 10, true);
}

#[test]
fn connector_to_two_phase_sink_restored_onto_more_shards() {
    crash_run("grow", "0,1", "0-2", 4);
}

// ---------------------------------------------------------------------------------------------
// The protocol's rules, without checkpoints, into a plain TCP sink.

fn connector_engine(shards: &str, sink: &Sink) -> Engine {
    let source = format!("127.0.0.1:0:{COOKIE}:10:4");
    Engine::start_command(word_count(&source, &sink.addr.to_string(), shards, None))
}

fn connect(engine: &Engine) -> TcpStream {
    let c = TcpStream::connect(engine.addr("Text")).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c
}

/// A connector that has said Hello (getting `credits`) and notified a new stream `id`.
fn open_stream(engine: &Engine, credits: u32, id: u64, name: &str) -> TcpStream {
    let mut c = connect(engine);
    c.write_all(&hello("0.0.1", COOKIE)).unwrap();
    assert_eq!(read_in(&mut c), Some(In::Ok(credits)));
    c.write_all(&notify(id, name, NONE)).unwrap();
    assert_eq!(read_in(&mut c), Some(In::NotifyAck(true, id, NONE)));
    c
}

#[test]
fn a_bad_hello_gets_an_error_and_the_engine_serves_on() {
    let sink = Sink::bind();
    let engine = connector_engine("0,1,2", &sink);
    let mut c = connect(&engine);
    c.write_all(&hello("0.0.1", "wrong cookie")).unwrap();
    assert!(matches!(read_in(&mut c), Some(In::Error(e)) if e.contains("cookie")));
    assert_eq!(read_in(&mut c), None, "closed after the error");
    let mut c = connect(&engine);
    c.write_all(&hello("v0.0.1", COOKIE)).unwrap();
    assert!(matches!(read_in(&mut c), Some(In::Error(e)) if e.contains("version")));
    // A message before Hello, and one on a stream never notified.
    let mut c = connect(&engine);
    c.write_all(&message(1, 0, b"a b")).unwrap();
    assert!(matches!(read_in(&mut c), Some(In::Error(_))));
    let mut c = connect(&engine);
    c.write_all(&hello("0.0.1", COOKIE)).unwrap();
    assert_eq!(read_in(&mut c), Some(In::Ok(10)));
    c.write_all(&message(5, 0, b"a b")).unwrap();
    assert!(matches!(read_in(&mut c), Some(In::Error(e)) if e.contains("not notified")));
    // An oversized length: an error, and the next connector is served.
    let mut c = connect(&engine);
    c.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert!(matches!(read_in(&mut c), Some(In::Error(_))));
    let mut c = open_stream(&engine, 10, 9, "s");
    c.write_all(&message(9, 0, b"still served")).unwrap();
    wait_lines(&sink, 2);
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
}

fn wait_lines(sink: &Sink, n: usize) {
    let until = Instant::now() + DEADLINE;
    while sink.contents().iter().filter(|&&b| b == b'\n').count() < n {
        assert!(Instant::now() < until, "{n} lines at the sink");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Message ids at or below the last one seen are replays: dropped. A stream is active on one
/// connection at a time. Credits run out and come back with an Ack; EOS is acknowledged with
/// the stream's last id; a stop says Restart.
#[test]
fn replays_are_dropped_credits_refill_and_eos_is_acknowledged() {
    let sink = Sink::bind();
    let engine = connector_engine("0-3", &sink);
    let mut c = open_stream(&engine, 10, 7, "seven");
    // Another connection cannot take stream 7 while this one has it.
    let mut other = connect(&engine);
    other.write_all(&hello("0.0.1", COOKIE)).unwrap();
    assert_eq!(read_in(&mut other), Some(In::Ok(10)));
    other.write_all(&notify(7, "seven", NONE)).unwrap();
    assert!(matches!(
        read_in(&mut other),
        Some(In::NotifyAck(false, 7, _))
    ));
    // Ids 0 1 2, then 1 2 again (replays), then 3: four messages of two words each. The
    // Notify and Hello took 2 of 10 credits; at 4 left the engine acknowledges.
    let mut out = Vec::new();
    for id in [0u64, 1, 2, 1, 2, 3] {
        out.extend_from_slice(&message(7, id, format!("m{id} x").as_bytes()));
    }
    c.write_all(&out).unwrap();
    match read_in(&mut c) {
        Some(In::Ack(credits, acks)) => {
            assert!(credits >= 6, "refilled {credits}");
            assert!(acks.iter().all(|&(s, _)| s == 7), "{acks:?}");
        }
        other => panic!("expected an Ack, got {other:?}"),
    }
    wait_lines(&sink, 8);
    c.write_all(&eos(7)).unwrap();
    let acked = loop {
        match read_in(&mut c) {
            Some(In::Ack(_, acks)) if acks.contains(&(7, 3)) => break true,
            Some(In::Ack(..)) => continue,
            other => panic!("expected the EOS Ack, got {other:?}"),
        }
    };
    assert!(acked);
    // The stream is free again: the other connection takes it, at its last id.
    other.write_all(&notify(7, "seven", NONE)).unwrap();
    assert_eq!(read_in(&mut other), Some(In::NotifyAck(true, 7, 3)));
    let text = String::from_utf8(sink.contents()).unwrap();
    let xs = text.lines().filter(|l| l.starts_with("x => ")).count();
    assert_eq!(xs, 4, "four messages, not six:\n{text}");
    // A stop says Restart with the address to come back to.
    let addr = engine.addr("Text").to_string();
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    let mut restart = None;
    while let Some(f) = read_in(&mut other) {
        if let In::Restart(a) = f {
            restart = Some(a);
        }
    }
    assert_eq!(restart, Some(addr));
}

/// The sum of every sample of `name` in a `/metrics` scrape (plain HTTP, read to the end).
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let mut found = false;
    let sum = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| {
            found = true;
            l.rsplit(' ').next().unwrap().parse::<f64>().unwrap()
        })
        .sum();
    assert!(found, "no {name} in\n{text}");
    sum
}

/// With checkpoints, a stream's Ack comes once a committed checkpoint holds its messages, and
/// `/metrics` shows the checkpoints and the replays dropped.
#[test]
fn acks_follow_committed_checkpoints_and_metrics_show_them() {
    let dir =
        std::env::temp_dir().join(format!("bettong-connector-{}-metrics", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sink = Sink::bind();
    let mut cmd = word_count(
        &format!("127.0.0.1:0:{COOKIE}:100:10"),
        &sink.addr.to_string(),
        "0,1",
        Some(&dir.display().to_string()),
    );
    cmd.args(["--metrics-addr", "127.0.0.1:0"]);
    let engine = Engine::start_command(cmd);
    let mut c = open_stream(&engine, 100, 7, "seven");
    let mut out = Vec::new();
    for id in [0u64, 1, 2, 1, 2] {
        out.extend_from_slice(&message(7, id, format!("m{id}").as_bytes()));
    }
    c.write_all(&out).unwrap();
    // Credits are plentiful: the only Ack that can come is a committed checkpoint's.
    match read_in(&mut c) {
        Some(In::Ack(_, acks)) => assert_eq!(acks, vec![(7, 2)]),
        other => panic!("expected an Ack, got {other:?}"),
    }
    let m = engine.addr("metrics");
    // The shard with the connection has heard; the other hears about when it does.
    let until = Instant::now() + DEADLINE;
    while metric(m, "bettong_checkpoints_committed_total") < 2.0 {
        assert!(Instant::now() < until, "both shards hear of the commit");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(metric(m, "bettong_checkpoint_parts_total") >= 2.0);
    assert!(metric(m, "bettong_checkpoint_bytes_total") > 0.0);
    assert!(metric(m, "bettong_checkpoint_last_committed_id") >= 1.0);
    assert_eq!(metric(m, "bettong_duplicates_dropped_total"), 2.0);
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 2PC sink that accepts and never answers: the stop gives up at the drain timeout, exits 1
/// and counts every output as undelivered (none was made durable at the sink).
#[test]
fn a_silent_two_phase_sink_makes_the_stop_give_up_and_say_so() {
    let dir = std::env::temp_dir().join(format!("bettong-connector-{}-silent", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for c in silent.incoming().flatten() {
            keep.lock().unwrap().push(c); // accepted, never read or answered
        }
    });
    let mut cmd = word_count(
        "127.0.0.1:0",
        &format!("2pc:{addr}"),
        "0,1",
        Some(&dir.display().to_string()),
    );
    cmd.args(["--drain-timeout", "1s"]);
    let engine = Engine::start_command(cmd);
    let mut input = Vec::new();
    for i in 0..100 {
        input.extend_from_slice(&common::frame(format!("a{i} b c").as_bytes()));
    }
    common::send(engine.addr("Text"), &input);
    // Both shards have connected; the stop reads the client's connection to its end.
    common::wait_until("both shards connected", || held.lock().unwrap().len() >= 2);
    let (status, stderr) = engine.stop();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        common::summary_count(&stderr, "undelivered"),
        300,
        "{stderr}"
    );
    assert!(
        stderr.contains("300 output(s) could not be delivered"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connector that vanishes in the middle of a frame: what it sent whole is processed, the
/// torn frame is dropped and counted, and its stream is free for the next connection at the
/// last id processed (no checkpoints: at once).
#[test]
fn a_connector_that_vanishes_mid_frame_leaves_its_stream_at_the_last_whole_message() {
    let sink = Sink::bind();
    let engine = connector_engine("0-3", &sink);
    let mut c = open_stream(&engine, 10, 5, "five");
    let mut out = message(5, 0, b"zero");
    out.extend_from_slice(&message(5, 1, b"one"));
    let torn = message(5, 2, b"two");
    out.extend_from_slice(&torn[..torn.len() - 2]);
    c.write_all(&out).unwrap();
    wait_lines(&sink, 2);
    drop(c);
    let mut next = connect(&engine);
    next.write_all(&hello("0.0.1", COOKIE)).unwrap();
    assert_eq!(read_in(&mut next), Some(In::Ok(10)));
    let until = Instant::now() + DEADLINE;
    loop {
        next.write_all(&notify(5, "five", NONE)).unwrap();
        match read_in(&mut next) {
            Some(In::NotifyAck(true, 5, por)) => {
                assert_eq!(por, 1);
                break;
            }
            // The old connection's end may not have been seen yet.
            Some(In::NotifyAck(false, 5, _)) => {
                assert!(Instant::now() < until, "stream 5 is never freed");
                std::thread::sleep(Duration::from_millis(1));
            }
            Some(In::Ack(..)) => {} // credits
            other => panic!("{other:?}"),
        }
    }
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        common::summary_count(&stderr, "cut mid-frame"),
        1,
        "{stderr}"
    );
    let text = String::from_utf8(sink.contents()).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
}
