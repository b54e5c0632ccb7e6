//! Connection churn and descriptor exhaustion against the real `bettong passthrough`, over real
//! sockets: memory and descriptors follow the open connections, not the connections ever made,
//! and running out of descriptors pauses accepting without stopping the outputs.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Instant;

use common::{frame, open_fds, payloads, rss_kib, summary_count, wait_until, Engine, Sink};

fn passthrough(cores: &str, sink: &Sink) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bettong"));
    cmd.args([
        "passthrough",
        "--in",
        "127.0.0.1:0",
        "--out",
        &sink.addr.to_string(),
        "--cores",
        cores,
        "--no-pin",
        "--metrics-interval",
        "0",
    ]);
    cmd
}

/// Connects, writes `bytes` and closes, from `threads` threads in parallel, `per_thread` times
/// each; `bytes(thread, i)` gives what each connection sends.
fn churn(addr: SocketAddr, threads: usize, per_thread: usize, bytes: fn(usize, usize) -> Vec<u8>) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..per_thread {
                    let mut c = TcpStream::connect(addr).unwrap();
                    c.write_all(&bytes(t, i)).unwrap();
                }
            });
        }
    });
}

const FRAMES_PER_CONN: usize = 3;

fn churn_message(t: usize, i: usize, k: usize) -> String {
    format!("{t}:{i}:{k}")
}

fn churn_bytes(t: usize, i: usize) -> Vec<u8> {
    (0..FRAMES_PER_CONN)
        .flat_map(|k| frame(churn_message(t, i, k).as_bytes()))
        .collect()
}

/// 5,000 short connections (open, send three ~10-byte frames, close): every message comes
/// out, and afterwards the engine's resident memory is within 2× of what it was after start-up
/// and its descriptor count is back to the start-up one (plus the sink connections it opened).
/// Before the fix, a burst was accepted whole before any connection was served, so up to 1,024
/// closed connections per shard stayed open, each with a 256 KiB buffer (RSS ~700 MB).
#[test]
fn churn_of_short_connections_gives_back_memory_and_descriptors() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 1250;
    let sink = Sink::bind();
    let engine = Engine::start_command(passthrough("0-1", &sink));
    let pid = engine.pid();
    let (rss0, fds0) = (rss_kib(pid), open_fds(pid));
    let addr = engine.addr("Frames");

    let started = Instant::now();
    churn(addr, THREADS, PER_THREAD, churn_bytes);
    let expected: BTreeSet<String> = (0..THREADS)
        .flat_map(|t| {
            (0..PER_THREAD).flat_map(move |i| (0..FRAMES_PER_CONN).map(move |k| (t, i, k)))
        })
        .map(|(t, i, k)| churn_message(t, i, k))
        .collect();
    let expected_bytes: usize = expected.iter().map(|m| 4 + m.len()).sum();
    wait_until("every churned message at the sink", || {
        sink.bytes() >= expected_bytes
    });
    // Closing is asynchronous: the last connections may still be closing.
    wait_until("the descriptor count back to its start-up value", || {
        open_fds(pid) <= fds0 + sink.connections()
    });
    let (rss1, fds1) = (rss_kib(pid), open_fds(pid));
    eprintln!(
        "churn of {} connections in {:?}: RSS {rss0} -> {rss1} KiB, fds {fds0} -> {fds1} \
         ({} sink connections)",
        THREADS * PER_THREAD,
        started.elapsed(),
        sink.connections()
    );
    assert!(
        rss1 <= 2 * rss0,
        "RSS after churn {rss1} KiB is over twice the start-up {rss0} KiB"
    );

    let (status, stderr) = engine.stop();
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    assert_eq!(
        summary_count(&stderr, "connections"),
        (THREADS * PER_THREAD) as u64
    );
    let got: Vec<String> = sink
        .finish()
        .iter()
        .flat_map(|b| payloads(b))
        .map(|p| String::from_utf8(p).unwrap())
        .collect();
    assert_eq!(got.len(), expected.len(), "a message was lost or repeated");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
}

/// Idle connections hold no read buffer: 500 open connections that have each sent one frame
/// cost the engine a few KiB each (they cost 256 KiB each before), and closing them gives the
/// descriptors back.
#[test]
fn idle_connections_cost_little_memory() {
    const CONNS: usize = 500;
    let sink = Sink::bind();
    let engine = Engine::start_command(passthrough("0-1", &sink));
    let pid = engine.pid();
    let (rss0, fds0) = (rss_kib(pid), open_fds(pid));
    let addr = engine.addr("Frames");
    let clients: Vec<TcpStream> = (0..CONNS)
        .map(|i| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(&frame(format!("idle {i}").as_bytes())).unwrap();
            c
        })
        .collect();
    let expected_bytes: usize = (0..CONNS).map(|i| 4 + format!("idle {i}").len()).sum();
    wait_until("a frame from every idle connection", || {
        sink.bytes() >= expected_bytes
    });
    let rss_idle = rss_kib(pid);
    let per_conn = rss_idle.saturating_sub(rss0) * 1024 / CONNS as u64;
    eprintln!("{CONNS} idle connections: RSS {rss0} -> {rss_idle} KiB ({per_conn} bytes each)");
    assert!(
        per_conn < 32 * 1024,
        "an idle connection costs {per_conn} bytes of RSS"
    );
    drop(clients);
    wait_until("the idle connections' descriptors back", || {
        open_fds(pid) <= fds0 + sink.connections()
    });
    let (status, stderr) = engine.stop();
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
}

/// With `RLIMIT_NOFILE` at 64 and 150 clients holding their connections open, the engine
/// accepts what its descriptors allow, keeps a reserve so its sink connection still opens and
/// delivers those connections' messages while the others wait in the listen queue, logs
/// a bounded number of lines (at most one a second per shard, not ~100 a second), and
/// delivers everything once the clients leave.
#[test]
fn descriptor_exhaustion_pauses_accepting_and_outputs_keep_flowing() {
    const CLIENTS: usize = 150;
    const LIMIT: libc::rlim_t = 64;
    let sink = Sink::bind();
    let mut cmd = passthrough("0", &sink);
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which
    // is async-signal-safe, on a value on its own stack.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let engine = Engine::start_command(cmd);
    let pid = engine.pid();
    let addr = engine.addr("Frames");
    let msg = |i: usize| format!("client {i}");
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| {
            // The kernel completes the handshake from the listen queue, so this succeeds even
            // while the engine is not accepting.
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(&frame(msg(i).as_bytes())).unwrap();
            c
        })
        .collect();
    engine.wait_for_stderr("not accepting new connections");
    // The connections it has are served, through a sink connection opened after the limit
    // was reached.
    wait_until("outputs while out of descriptors", || {
        sink.bytes() >= 10 * (4 + msg(0).len())
    });
    assert!(open_fds(pid) <= LIMIT as usize);
    assert_eq!(sink.connections(), 1);
    drop(clients);
    let all: usize = (0..CLIENTS).map(|i| 4 + msg(i).len()).sum();
    wait_until("every client's message once they left", || {
        sink.bytes() >= all
    });
    let (status, stderr) = engine.stop();
    let secs = started.elapsed().as_secs() as usize;
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    let lines = stderr
        .lines()
        .filter(|l| l.contains("accept") || l.contains("descriptors"))
        .count();
    assert!(
        lines <= secs + 3,
        "{lines} lines about accepting in {secs} s:\n{stderr}"
    );
    let mut got: Vec<String> = sink
        .finish()
        .iter()
        .flat_map(|b| payloads(b))
        .map(|p| String::from_utf8(p).unwrap())
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..CLIENTS).map(msg).collect();
    want.sort();
    assert_eq!(got, want);
}
