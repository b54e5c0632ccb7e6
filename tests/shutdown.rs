//! Stopping `bettong word-count` with real signals: with three and four shards, within
//! `--drain-timeout` whatever the clients and the sink do, and without losing outputs when the
//! sink connection drops and comes back.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{frame, send, summary_count, Engine, Sink, DEADLINE};

/// `word => count` lines: every count seen per word (duplicates kept).
fn counts_seen(conns: &[Vec<u8>]) -> HashMap<String, Vec<u64>> {
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for bytes in conns {
        let text = std::str::from_utf8(bytes).expect("output is UTF-8");
        assert!(text.is_empty() || text.ends_with('\n'), "torn last line");
        add_lines(&mut seen, text);
    }
    seen
}

fn add_lines(seen: &mut HashMap<String, Vec<u64>>, text: &str) {
    {
        for line in text.lines() {
            let (word, count) = line
                .split_once(" => ")
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            seen.entry(word.to_string())
                .or_default()
                .push(count.parse().unwrap());
        }
    }
}

/// Nothing lost: every word's counts 1..=n each appear at least once (duplicates allowed),
/// nothing beyond n. Returns how many lines were duplicates.
fn assert_none_lost(seen: &HashMap<String, Vec<u64>>, expected: &HashMap<String, u64>) -> u64 {
    assert_none_lost_in(seen, expected, "")
}

/// [`assert_none_lost`], with `context` (what the run did) in the message of a failure.
fn assert_none_lost_in(
    seen: &HashMap<String, Vec<u64>>,
    expected: &HashMap<String, u64>,
    context: &str,
) -> u64 {
    assert_eq!(seen.len(), expected.len(), "distinct words\n{context}");
    let mut duplicates = 0;
    for (word, &n) in expected {
        let mut counts = seen
            .get(word)
            .unwrap_or_else(|| panic!("no output for {word:?}"))
            .clone();
        let lines = counts.len() as u64;
        counts.sort_unstable();
        counts.dedup();
        if counts != (1..=n).collect::<Vec<_>>() {
            let missing: Vec<u64> = (1..=n)
                .filter(|c| counts.binary_search(c).is_err())
                .collect();
            panic!(
                "counts of {word:?}: {} of {n} missing ({:?} .. {:?})\n{context}",
                missing.len(),
                missing.first(),
                missing.last()
            );
        }
        duplicates += lines - n;
    }
    duplicates
}

/// `conns` connections of `per_conn` messages, each message three words out of 40.
fn traffic(conns: usize, per_conn: usize) -> (Vec<Vec<u8>>, HashMap<String, u64>) {
    let mut expected: HashMap<String, u64> = HashMap::new();
    let mut out = Vec::new();
    for c in 0..conns {
        let mut bytes = Vec::new();
        for i in 0..per_conn {
            let words: Vec<String> = (0..3)
                .map(|k| format!("w{}", (c * 7 + i * 3 + k) % 40))
                .collect();
            for w in &words {
                *expected.entry(w.clone()).or_insert(0) += 1;
            }
            bytes.extend(frame(words.join(" ").as_bytes()));
        }
        out.push(bytes);
    }
    (out, expected)
}

fn start(cores: &str, out: SocketAddr, extra: &[&str]) -> Engine {
    let out = out.to_string();
    let mut args = vec![
        "word-count",
        "--in",
        "127.0.0.1:0",
        "--out",
        &out,
        "--cores",
        cores,
        "--no-pin",
        "--metrics-interval",
        "0",
    ];
    args.extend_from_slice(extra);
    Engine::start(&args)
}

fn send_all(addr: SocketAddr, conns: &[Vec<u8>]) {
    std::thread::scope(|s| {
        for bytes in conns {
            s.spawn(move || send(addr, bytes));
        }
    });
}

/// Traffic, then SIGTERM: exits 0 within 10 s, every count delivered exactly once. Repeated,
/// because the hang this guards against (a drain task spinning on a closed ring, which starved
/// its shard's stop) depended on the order in which shards closed their rings.
fn stops_after_traffic(cores: &str, rounds: usize, extra: &[&str]) {
    for round in 0..rounds {
        let sink = Sink::bind();
        let engine = start(cores, sink.addr, extra);
        let (conns, expected) = traffic(4, 300);
        send_all(engine.addr("Text"), &conns);
        let (status, took, stderr) = engine.terminate_within(Duration::from_secs(10));
        assert!(
            status.success(),
            "round {round}: exit {status}; stderr:\n{stderr}"
        );
        let seen = counts_seen(&sink.finish());
        assert_eq!(
            assert_none_lost(&seen, &expected),
            0,
            "round {round}: duplicates"
        );
        assert_eq!(summary_count(&stderr, "messages in"), 1200);
        eprintln!("{cores}: round {round} stopped in {took:?}");
    }
}

/// Idle (no connection ever made), then SIGTERM.
fn stops_when_idle(cores: &str, rounds: usize, extra: &[&str]) {
    for round in 0..rounds {
        let sink = Sink::bind();
        let engine = start(cores, sink.addr, extra);
        let (status, _, stderr) = engine.terminate_within(Duration::from_secs(10));
        assert!(
            status.success(),
            "round {round}: exit {status}; stderr:\n{stderr}"
        );
    }
}

#[test]
fn sigterm_stops_three_unpinned_shards() {
    stops_after_traffic("0-2", 5, &[]);
    stops_when_idle("0-2", 5, &[]);
}

#[test]
fn sigterm_stops_four_unpinned_shards() {
    stops_after_traffic("0-3", 5, &[]);
    stops_when_idle("0-3", 5, &[]);
}

/// The same with `--poll spin`: an exchange drain then never parks (it polls its lanes for as
/// long as its shard spins, for ever), so only its lanes closing ends it. Three shards that
/// never sleep on this machine's two cores: fewer rounds.
#[test]
fn sigterm_stops_three_unpinned_spinning_shards() {
    stops_after_traffic("0-2", 2, &["--poll", "spin"]);
    stops_when_idle("0-2", 2, &["--poll", "spin"]);
}

/// Waits (polling, with a deadline) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A client that stays connected and silent: the stop cuts it at the drain timeout, and the
/// engine exits 0 (nothing was lost) within the timeout plus a margin.
#[test]
fn idle_client_is_cut_at_the_drain_timeout() {
    let sink = Sink::bind();
    let engine = start("0,1", sink.addr, &["--drain-timeout", "1s"]);
    let mut client = TcpStream::connect(engine.addr("Text")).unwrap();
    client.write_all(&frame(b"idle client here")).unwrap();
    // Its three outputs have arrived: the engine has accepted and read the connection.
    wait_until("the client's outputs", || {
        sink.bytes() > 0 && sink.bytes() >= 3 * 8
    });
    let (status, took, stderr) = engine.terminate_within(Duration::from_secs(6));
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(
        took >= Duration::from_millis(900),
        "did not wait for the client: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(summary_count(&stderr, "cut connections"), 1, "{stderr}");
    assert_eq!(summary_count(&stderr, "undelivered"), 0, "{stderr}");
    assert_eq!(summary_count(&stderr, "out"), 3, "{stderr}");
    // The client sees its connection end.
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    eprintln!("idle client: stopped in {took:?}");
}

/// Many messages of three words each, on one connection sent from a background thread (which
/// may block on backpressure until the engine cuts it).
fn blast(addr: SocketAddr, messages: usize) -> std::thread::JoinHandle<()> {
    let (conns, _) = traffic(1, messages);
    std::thread::spawn(move || {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(&conns[0]);
        }
    })
}

/// The outputs of a stop that gave up on its sink: exit status 1, the summary's
/// `undelivered` > 0, and `out + undelivered` accounts for every output.
fn assert_gave_up(status: std::process::ExitStatus, stderr: &str) -> (u64, u64) {
    assert_eq!(status.code(), Some(1), "exit {status}; stderr:\n{stderr}");
    let undelivered = summary_count(stderr, "undelivered");
    let out = summary_count(stderr, "out");
    assert!(undelivered > 0, "{stderr}");
    assert_eq!(
        out + undelivered,
        3 * summary_count(stderr, "messages in"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{undelivered} output(s) could not be delivered")),
        "{stderr}"
    );
    (out, undelivered)
}

/// A sink that accepts but never reads: the stop gives up at the drain timeout, exits 1 and
/// says how many outputs were not delivered. The sink's receive buffers then hold at most
/// what the engine counted as delivered (acknowledged by the sink's TCP).
#[test]
fn sink_that_never_reads_is_given_up_at_the_drain_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted_tx, accepted) = mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { break };
            let _ = accepted_tx.send(s);
        }
    });
    let engine = start(
        "0,1",
        addr,
        &["--drain-timeout", "1s", "--sink-buffer", "16384"],
    );
    let sender = blast(engine.addr("Text"), 60_000);
    // Output is flowing: a shard's sink connection has bytes waiting. (The shards connect to
    // the sink at start, before any input is read, so an accepted connection alone says
    // nothing: stopping then found 0 messages in and exited 0.)
    let mut conns: Vec<TcpStream> = Vec::new();
    wait_until("output at the sink", || {
        conns.extend(accepted.try_iter());
        conns.iter().any(|c| {
            c.set_nonblocking(true).unwrap();
            let waiting = matches!(c.peek(&mut [0u8; 1]), Ok(n) if n > 0);
            c.set_nonblocking(false).unwrap();
            waiting
        })
    });
    let (status, took, stderr) = engine.terminate_within(Duration::from_secs(6));
    let _ = sender.join();
    let (out, undelivered) = assert_gave_up(status, &stderr);
    assert!(took < Duration::from_secs(4), "took {took:?}");
    // Now read what the sink's kernel took: never more complete lines than `out`.
    conns.extend(accepted.try_iter());
    let mut lines = 0u64;
    for mut c in conns {
        let mut bytes = Vec::new();
        let _ = c.read_to_end(&mut bytes);
        lines += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    assert!(
        lines <= out,
        "the sink got {lines} lines, the engine counted {out} delivered"
    );
    eprintln!("never-reading sink: stopped in {took:?}, out {out}, undelivered {undelivered}, lines read after exit {lines}");
}

/// No sink listening at all: everything is undelivered, the stop still ends in time.
#[test]
fn no_sink_listening_is_given_up_at_the_drain_timeout() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let engine = start("0,1", addr, &["--drain-timeout", "1s"]);
    let (conns, _) = traffic(1, 100);
    send(engine.addr("Text"), &conns[0]);
    engine.wait_for_stderr("not listening yet");
    let (status, took, stderr) = engine.terminate_within(Duration::from_secs(6));
    let (out, undelivered) = assert_gave_up(status, &stderr);
    assert_eq!((out, undelivered), (0, 300), "{stderr}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

/// How the sink lets its connections go.
#[derive(Clone, Copy, Debug)]
enum Close {
    /// An ordinary close (FIN).
    Fin,
    /// An abortive close (SO_LINGER 0: RST).
    Rst,
}

/// A sink that, once it has received `drop_after` bytes and accepted `conns` connections (one
/// per shard), drops every connection and its listener, is away for a moment, and comes back
/// on the same port, where it reads until the engine closes. Returns the address, the bytes of
/// every connection, and a receiver told when the sink is back; it stops accepting once
/// `engine_gone` is set and every connection it took has ended.
///
/// It models a sink that reads everything its TCP acknowledged, the case in which the engine
/// promises to lose nothing (see `net::sink`). Two things would break that:
///
/// - A connection closed with data unread. So a connection is first shut down both ways and
///   then read to its end before being closed: from the shutdown on, its TCP acknowledges
///   nothing more (new data draws a reset), and the reads take everything it had
///   acknowledged.
/// - A listener closed with connections still in its accept queue. The kernel completes the
///   handshake of a queued connection and acknowledges its data before anyone accepts it;
///   closing the listener then resets it and drops that data, which its sender counted as
///   delivered. So the listener is closed first, after its queue is drained, while every
///   shard's connection is still up: no shard has a reason to connect then. Only then are the
///   connections shut down; the shards' reconnects find nothing listening (refused) until
///   the sink is back. (The listener used to be closed after the connections were shut down,
///   racing with the shards' reconnects: a reconnect queued between the last accept and the
///   close had the kept output acknowledged and lost, the whole pre-drop output of a shard
///   whose first connection had delivered nothing. Seen once under heavy CPU load; every
///   time with a 300 ms pause put in that gap.)
fn dropping_sink(
    how: Close,
    conns: usize,
    drop_after: usize,
    engine_gone: Arc<AtomicBool>,
) -> (
    SocketAddr,
    std::thread::JoinHandle<Vec<Vec<u8>>>,
    mpsc::Receiver<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (back_tx, back) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let received = Arc::new(AtomicUsize::new(0));
        let mut streams: Vec<TcpStream> = Vec::new();
        let mut readers = Vec::new();
        let (enough_tx, enough) = mpsc::channel::<()>();
        // Before the drop: one connection per shard, each read on a thread that counts the
        // bytes and says when there are enough.
        for _ in 0..conns {
            let (s, _) = listener.accept().unwrap();
            streams.push(s.try_clone().unwrap());
            let (received, enough_tx) = (received.clone(), enough_tx.clone());
            readers.push(std::thread::spawn(move || {
                let mut s = s;
                let mut bytes = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            bytes.extend_from_slice(&chunk[..n]);
                            if received.fetch_add(n, Ordering::SeqCst) + n >= drop_after {
                                let _ = enough_tx.send(());
                            }
                        }
                    }
                }
                if let Close::Rst = how {
                    set_linger_zero(&s);
                }
                bytes
            }));
        }
        enough
            .recv_timeout(DEADLINE)
            .expect("the sink never had its bytes");
        // With every shard connected, no connection comes until one is dropped: the queue is
        // empty now, and closing the listener loses none.
        listener.set_nonblocking(true).unwrap();
        assert!(
            listener.accept().is_err(),
            "the engine made a connection more than it has shards"
        );
        drop(listener);
        // The drop: stop every connection's TCP from taking more, then let the readers finish.
        for s in &streams {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let mut all: Vec<Vec<u8>> = Vec::new();
        for r in readers.drain(..) {
            all.push(r.join().unwrap());
        }
        // Away for a moment, then back on the same port.
        std::thread::sleep(Duration::from_millis(300));
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let _ = back_tx.send(());
        let mut readers = Vec::new();
        let until = Instant::now() + DEADLINE;
        // Accept until the engine has exited and the readers have all seen their connection
        // end. (Ending once the connections so far had ended raced with a shard that
        // reconnected later than another: its connection was refused and its outputs
        // undelivered.)
        loop {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    readers.push(std::thread::spawn(move || {
                        let mut bytes = Vec::new();
                        let _ = s.read_to_end(&mut bytes);
                        bytes
                    }));
                }
                Err(_) => {
                    if engine_gone.load(Ordering::SeqCst) && readers.iter().all(|r| r.is_finished())
                    {
                        break;
                    }
                    assert!(Instant::now() < until, "the engine never closed its sink");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        for r in readers {
            all.push(r.join().unwrap());
        }
        all
    });
    (addr, handle, back)
}

fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is `s`'s open socket; SO_LINGER reads one `linger` from the pointer.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The sink drops its connections in the middle of the run and comes back on the same port:
/// no output is lost (every count of every word arrives), duplicates are possible and are
/// never more than the engine reports as resent.
fn sink_drop_loses_nothing(how: Close) {
    let engine_gone = Arc::new(AtomicBool::new(false));
    // One connection per shard of `start("0,1", ..)`.
    let (addr, sink, back) = dropping_sink(how, 2, 40_000, engine_gone.clone());
    let engine = start("0,1", addr, &[]);
    let (conns, expected) = traffic(4, 3000);
    // Half the connections, enough output for the sink to drop; the other half once it is
    // back, so that there is output to deliver after the drop. Sending everything at once, the
    // engine could have written all its output into the sockets before the sink read its
    // 40 000 bytes: nothing was left to send, no shard reconnected, and the sink waited for
    // a connection that never came (2 runs of 8 once connections were balanced over the
    // shards, which finished the work sooner).
    let (first, second) = conns.split_at(2);
    send_all(engine.addr("Text"), first);
    back.recv_timeout(DEADLINE).expect("the sink comes back");
    send_all(engine.addr("Text"), second);
    let (status, took, stderr) = engine.terminate_within(Duration::from_secs(20));
    engine_gone.store(true, Ordering::SeqCst);
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    let received = sink.join().unwrap();
    let mut seen = HashMap::new();
    let mut torn = 0;
    for bytes in &received {
        let text = std::str::from_utf8(bytes).expect("output is UTF-8");
        // The old connections may end inside a line (its rest was resent whole).
        let whole = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        torn += (whole.len() < text.len()) as u64;
        add_lines(&mut seen, whole);
    }
    // What each connection delivered, and what the engine said, for a failure to be read.
    let context = format!(
        "{how:?}: bytes per connection {:?}, torn lines {torn}; engine stderr:\n{stderr}",
        received.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let duplicates = assert_none_lost_in(&seen, &expected, &context);
    let total: u64 = expected.values().sum();
    assert_eq!(summary_count(&stderr, "out"), total, "{stderr}");
    assert_eq!(summary_count(&stderr, "undelivered"), 0, "{stderr}");
    let resent = summary_count(&stderr, "resent");
    assert!(
        duplicates <= resent,
        "{duplicates} duplicates but {resent} resent:\n{stderr}"
    );
    assert!(summary_count(&stderr, "sink reconnects") > 0, "{stderr}");
    eprintln!(
        "{how:?}: {total} outputs, {} connections, resent {resent} ({} bytes), duplicates seen {duplicates}, torn lines {torn}, stopped in {took:?}",
        received.len(),
        summary_count(&stderr, "resent bytes")
    );
}

#[test]
fn sink_dropped_with_fin_and_back_loses_nothing() {
    sink_drop_loses_nothing(Close::Fin);
}

#[test]
fn sink_dropped_with_rst_and_back_loses_nothing() {
    sink_drop_loses_nothing(Close::Rst);
}

/// A free port of 127.0.0.1 where nothing listens (bound, then let go).
fn port_nobody_listens_on() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Waits until each of `shards` shards has said that the sink at `addr` does not
/// listen: each shard's writer is then in its connect back-off.
fn wait_all_refused(engine: &Engine, shards: usize, addr: SocketAddr) {
    for shard in 0..shards {
        engine.wait_for_stderr(&format!("shard {shard}: sink {addr}: not listening yet"));
    }
}

/// Nothing listens at `--out` and nothing was sent: there is nothing to deliver, so SIGTERM
/// ends the engine at once, not at the drain timeout. (It waited for the whole
/// `--drain-timeout`, 30 s here: the stop's wake-up of the sink writer was taken by its
/// connect back-off, which just retried.)
fn unreachable_sink_does_not_hold_up_the_stop(cores: &str, shards: usize, rounds: usize) {
    for round in 0..rounds {
        let addr = port_nobody_listens_on();
        let engine = start(cores, addr, &["--drain-timeout", "30s"]);
        wait_all_refused(&engine, shards, addr);
        let (status, took, stderr) = engine.terminate_within(Duration::from_secs(3));
        assert!(
            status.success(),
            "{cores} round {round}: exit {status}; stderr:\n{stderr}"
        );
        assert_eq!(summary_count(&stderr, "out"), 0, "{stderr}");
        assert_eq!(summary_count(&stderr, "undelivered"), 0, "{stderr}");
        eprintln!("{cores}: round {round}: unreachable sink, stopped in {took:?}");
    }
}

#[test]
fn unreachable_sink_does_not_hold_up_the_stop_of_two_shards() {
    unreachable_sink_does_not_hold_up_the_stop("0,1", 2, 3);
}

#[test]
fn unreachable_sink_does_not_hold_up_the_stop_of_four_shards() {
    unreachable_sink_does_not_hold_up_the_stop("0-3", 4, 3);
}

/// Outputs are waiting for a sink that does not listen when the stop begins; the sink comes
/// back during the drain: the stop waits for it and delivers everything, exactly once.
fn sink_back_during_the_drain_gets_everything(cores: &str, shards: usize) {
    let addr = port_nobody_listens_on();
    let engine = start(cores, addr, &["--drain-timeout", "30s"]);
    wait_all_refused(&engine, shards, addr);
    let (conns, expected) = traffic(2, 100);
    send_all(engine.addr("Text"), &conns);
    let start = Instant::now();
    // SAFETY: sending a signal to our own child process, which has not been reaped.
    unsafe { libc::kill(engine.pid() as i32, libc::SIGTERM) };
    // The engine has taken the signal and is draining: only now does the sink listen.
    engine.wait_for_stderr("stopping: draining");
    let sink = Sink::on(TcpListener::bind(addr).unwrap(), 0);
    // Signal 0 sends nothing (the SIGTERM is sent already; a second one would exit at once
    // without draining): this only waits for the exit.
    let (status, stderr) = engine.signal_and_wait(0);
    let took = start.elapsed();
    assert!(
        status.success(),
        "{cores}: exit {status}; stderr:\n{stderr}"
    );
    assert_eq!(summary_count(&stderr, "messages in"), 200, "{stderr}");
    assert_eq!(summary_count(&stderr, "out"), 600, "{stderr}");
    assert_eq!(summary_count(&stderr, "undelivered"), 0, "{stderr}");
    let seen = counts_seen(&sink.finish());
    assert_eq!(assert_none_lost(&seen, &expected), 0, "{cores}: duplicates");
    assert!(took < Duration::from_secs(10), "{cores}: took {took:?}");
    eprintln!("{cores}: sink back during the drain, stopped in {took:?}");
}

#[test]
fn sink_back_during_the_drain_gets_everything_from_two_shards() {
    sink_back_during_the_drain_gets_everything("0,1", 2);
}

#[test]
fn sink_back_during_the_drain_gets_everything_from_three_shards() {
    sink_back_during_the_drain_gets_everything("0-2", 3);
}
