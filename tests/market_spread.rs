//! End-to-end tests of `bettong market-spread` over real sockets on 127.0.0.1, with 1 and 2
//! shards: generated data in, every OrderResult checked against a reference model.
//!
//! Messages of one symbol reach its state in order only when they travel on one connection, so
//! a run must not send orders before the initial NBBO is applied. The tests make sure of that
//! without sleeping:
//! 1. the initial NBBO goes over one Nbbo connection with the rejected symbols' records moved
//!    to its end;
//! 2. "probe" orders on the rejected symbols go over an Orders connection until every probe
//!    result carries its symbol's initial bid and offer (a probe seen too early carries 0/0 and
//!    is sent again). Records from one connection reach each shard in order (locally, or
//!    through one FIFO ring), so once a rejected symbol owned by a shard shows its NBBO, every
//!    earlier record for that shard was applied; the tests check that the rejected symbols
//!    cover every shard;
//! 3. only then go the NBBO updates and the orders, concurrently over several connections. The
//!    generator never updates a rejected symbol and never makes another symbol reject, so the
//!    outputs no longer depend on how those connections interleave.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bettong::runtime::router::shard_for;
use bettong::Key;
use bettong_apps::market_spread::{
    is_rejected_spread, wall_clock_ns, Nbbo, Order, OrderResult, NBBO_SOURCE, ORDERS_SOURCE,
    ORDER_RESULT_FRAME_LEN, ORDER_RESULT_PAYLOAD_LEN,
};
use bettong_giles::gen::{
    generate, read_expected, GenMarketSpreadArgs, INITIAL_NBBO_FILE, NBBO_FILE, ORDERS_FILE,
};
use common::{frame, result_key, summary_count, Engine, ResultKey, DEADLINE};

const TIME: [u8; 21] = *b"20160902-09:30:00.000";

/// A fresh directory under the system temp dir, unique to this process and call.
fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "bettong-market-spread-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Splits a buffer of `[u32 BE len][payload]` frames into payloads.
fn payloads(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    out
}

fn sorted_keys<'a>(results: impl IntoIterator<Item = &'a OrderResult>) -> Vec<ResultKey> {
    let mut keys: Vec<ResultKey> = results.into_iter().map(result_key).collect();
    keys.sort_unstable();
    keys
}

/// Order ids the generator never makes (it uses 6 alphanumerics), so test orders stand apart.
fn test_order_id(tag: u8, n: usize) -> [u8; 6] {
    let text = format!("#{}{n:04}", tag as char);
    text.as_bytes().try_into().unwrap()
}

/// What the engine writes, decoded frame by frame as it arrives, from any number of
/// connections (one per shard).
struct ResultSink {
    addr: SocketAddr,
    shared: Arc<(Mutex<Arrivals>, Condvar)>,
}

#[derive(Default)]
struct Arrivals {
    results: Vec<OrderResult>,
    peers: Vec<SocketAddr>,
    readers: Vec<JoinHandle<()>>,
    /// Set by `finish`: the acceptor ends once it has accepted this connection.
    sentinel: Option<SocketAddr>,
    errors: Vec<String>,
}

impl ResultSink {
    fn bind() -> ResultSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared: Arc<(Mutex<Arrivals>, Condvar)> = Arc::default();
        let for_acceptor = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let stream = stream.unwrap();
                let peer = stream.peer_addr().unwrap();
                let for_reader = for_acceptor.clone();
                let reader = std::thread::spawn(move || read_results(stream, &for_reader));
                let (lock, cv) = &*for_acceptor;
                let mut a = lock.lock().unwrap();
                a.peers.push(peer);
                a.readers.push(reader);
                cv.notify_all();
                if a.sentinel == Some(peer) {
                    break;
                }
            }
        });
        ResultSink { addr, shared }
    }

    /// Waits until `n` results have arrived in all, and returns them.
    fn wait_for(&self, n: usize, what: &str) -> Vec<OrderResult> {
        let until = Instant::now() + DEADLINE;
        let (lock, cv) = &*self.shared;
        let mut a = lock.lock().unwrap();
        while a.results.len() < n && a.errors.is_empty() {
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "waiting for {what}: only {} of {n} results arrived",
                a.results.len()
            );
            a = cv.wait_timeout(a, left).unwrap().0;
        }
        assert!(a.errors.is_empty(), "sink errors: {:?}", a.errors);
        a.results.clone()
    }

    /// Once the engine has exited: every result, and how many connections the engine opened.
    fn finish(self) -> (Vec<OrderResult>, usize) {
        let (lock, cv) = &*self.shared;
        let mut a = lock.lock().unwrap();
        // The kernel queues connections in order, so once this one is accepted every engine
        // connection made before the engine exited has been accepted too.
        let sentinel = TcpStream::connect(self.addr).unwrap();
        let me = sentinel.local_addr().unwrap();
        a.sentinel = Some(me);
        drop(sentinel);
        let until = Instant::now() + DEADLINE;
        while !a.peers.contains(&me) {
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the sink never accepted its own connection"
            );
            a = cv.wait_timeout(a, left).unwrap().0;
        }
        let readers: Vec<_> = a.readers.drain(..).collect();
        drop(a);
        for r in readers {
            r.join().unwrap();
        }
        let a = lock.lock().unwrap();
        assert!(a.errors.is_empty(), "sink errors: {:?}", a.errors);
        (a.results.clone(), a.peers.len() - 1)
    }
}

/// Reads one engine connection to its end, decoding whole 59-byte frames as they complete.
fn read_results(mut stream: TcpStream, shared: &(Mutex<Arrivals>, Condvar)) {
    let (lock, cv) = shared;
    let fail = |e: String| {
        lock.lock().unwrap().errors.push(e);
        cv.notify_all();
    };
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return fail(format!("read failed: {e}")),
        };
        pending.extend_from_slice(&chunk[..n]);
        let whole = pending.len() / ORDER_RESULT_FRAME_LEN * ORDER_RESULT_FRAME_LEN;
        let mut decoded = Vec::new();
        for f in pending[..whole].chunks_exact(ORDER_RESULT_FRAME_LEN) {
            if f[..4] != (ORDER_RESULT_PAYLOAD_LEN as u32).to_be_bytes() {
                return fail(format!("frame header {:?} is not 55", &f[..4]));
            }
            match OrderResult::decode(&f[4..]) {
                Ok(r) => decoded.push(r),
                Err(e) => return fail(format!("undecodable result: {e}")),
            }
        }
        pending.drain(..whole);
        lock.lock().unwrap().results.extend(decoded);
        cv.notify_all();
    }
    if !pending.is_empty() {
        fail(format!(
            "connection ended {} bytes into a frame",
            pending.len()
        ));
    }
}

/// A generated data set and what a correct run makes of it.
struct DataSet {
    dir: PathBuf,
    initial: Vec<Nbbo>,
    updates: Vec<u8>,
    orders: Vec<u8>,
    order_count: usize,
    update_count: usize,
    /// Initial bid and offer of each rejected symbol.
    rejected: HashMap<[u8; 4], (f64, f64)>,
    /// The outputs of the orders in `orders`.
    expected: Vec<OrderResult>,
}

impl DataSet {
    /// Generates the data and computes the expected outputs with a model written from the
    /// reference (§2.2), not with the engine's code.
    fn generate(name: &str) -> DataSet {
        let dir = temp_dir(name);
        let mut args = GenMarketSpreadArgs::new(&dir);
        // Seed 3: the 5 rejected symbols land on every shard at 2, 3 and 4 shards (key groups).
        args.seed = 3;
        args.symbols = 100;
        args.orders = 20_000;
        args.nbbo = 20_000;
        args.rejected = 5;
        args.rejected_orders = Some(300);
        generate(&args).unwrap();

        let read = |file: &str| std::fs::read(dir.join(file)).unwrap();
        let initial: Vec<Nbbo> = payloads(&read(INITIAL_NBBO_FILE))
            .into_iter()
            .map(|p| *Nbbo::from_payload(p).unwrap())
            .collect();
        let rejected: HashMap<[u8; 4], (f64, f64)> = initial
            .iter()
            .filter(|n| {
                let spread = n.offer() - n.bid();
                spread >= 0.05 || spread / ((n.bid() + n.offer()) / 2.0) >= 0.05
            })
            .map(|n| (*n.symbol(), (n.bid(), n.offer())))
            .collect();
        assert_eq!(rejected.len(), 5, "the generator's rejected symbols");

        // The premise of sending updates and orders concurrently: no update touches a rejected
        // symbol or turns another symbol into one.
        let updates = read(NBBO_FILE);
        let update_payloads = payloads(&updates);
        for p in &update_payloads {
            let n = Nbbo::from_payload(p).unwrap();
            assert!(
                !rejected.contains_key(n.symbol()),
                "update of a rejected symbol"
            );
            assert!(!is_rejected_spread(n.bid(), n.offer()), "rejecting update");
        }

        let orders = read(ORDERS_FILE);
        let order_payloads = payloads(&orders);
        let expected: Vec<OrderResult> = order_payloads
            .iter()
            .map(|p| Order::from_payload(p).unwrap())
            .filter_map(|o| {
                let &(bid, offer) = rejected.get(o.symbol())?;
                Some(OrderResult::new(&o.decoded(), bid, offer, 0))
            })
            .collect();
        assert_eq!(expected.len() as u64, read_expected(&dir).unwrap());
        DataSet {
            order_count: order_payloads.len(),
            update_count: update_payloads.len(),
            dir,
            initial,
            updates,
            orders,
            rejected,
            expected,
        }
    }

    /// The initial NBBO with the rejected symbols' records last (see the module comment).
    fn priming_bytes(&self) -> Vec<u8> {
        let (rejected, others): (Vec<&Nbbo>, Vec<&Nbbo>) = self
            .initial
            .iter()
            .partition(|n| self.rejected.contains_key(n.symbol()));
        let mut out = Vec::new();
        for n in others.into_iter().chain(rejected) {
            n.encode_framed(&mut out);
        }
        out
    }

    /// Checks that every shard owns a rejected symbol, which the priming proof needs.
    fn assert_rejected_cover(&self, shards: usize) {
        let covered: HashSet<usize> = self
            .rejected
            .keys()
            .map(|s| shard_for(s.stable_hash(), shards))
            .collect();
        assert_eq!(
            covered.len(),
            shards,
            "the rejected symbols must cover every shard; change the generator's seed"
        );
    }
}

impl Drop for DataSet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects to `addr` and writes `bytes` on its own thread; the connection closes at the end.
fn send_in_background(addr: SocketAddr, bytes: Vec<u8>) -> JoinHandle<()> {
    std::thread::spawn(move || common::send(addr, &bytes))
}

/// Sends `bytes` (whole records of `record_len`) over `connections` concurrent connections.
fn send_split(
    addr: SocketAddr,
    bytes: &[u8],
    record_len: usize,
    connections: usize,
) -> Vec<JoinHandle<()>> {
    let records = bytes.len() / record_len;
    let per_conn = records.div_ceil(connections) * record_len;
    bytes
        .chunks(per_conn)
        .map(|c| send_in_background(addr, c.to_vec()))
        .collect()
}

/// Sends the initial NBBO, then probes until every shard has applied it. Returns the probe
/// results.
fn prime(engine: &Engine, sink: &ResultSink, data: &DataSet) -> Vec<OrderResult> {
    common::send(engine.addr(NBBO_SOURCE), &data.priming_bytes());
    let mut probe_conn = TcpStream::connect(engine.addr(ORDERS_SOURCE)).unwrap();
    let mut waiting: Vec<[u8; 4]> = data.rejected.keys().copied().collect();
    waiting.sort_unstable();
    let mut probes = 0;
    let until = Instant::now() + DEADLINE;
    while !waiting.is_empty() {
        assert!(
            Instant::now() < until,
            "the initial NBBO was never applied for {waiting:?}"
        );
        let first = probes;
        let mut batch = Vec::new();
        for sym in &waiting {
            let id = test_order_id(b'P', probes);
            Order::new(1, 1, id, *sym, 100.0, 1.0, TIME).encode_framed(&mut batch);
            probes += 1;
        }
        std::io::Write::write_all(&mut probe_conn, &batch).unwrap();
        let results = sink.wait_for(probes, "probe results");
        assert_eq!(results.len(), probes, "only probes produce output so far");
        let ids: HashSet<[u8; 6]> = (first..probes).map(|n| test_order_id(b'P', n)).collect();
        for r in results.iter().filter(|r| ids.contains(&r.order_id)) {
            let primed = data.rejected[&r.symbol];
            if (r.bid.to_bits(), r.offer.to_bits()) == (primed.0.to_bits(), primed.1.to_bits()) {
                waiting.retain(|s| *s != r.symbol);
            } else {
                // A probe that overtook the initial NBBO sees a fresh state, nothing else.
                assert_eq!((r.bid, r.offer), (0.0, 0.0), "probe result {r:?}");
            }
        }
    }
    sink.wait_for(probes, "probe results")
}

/// Records on their own connections that each source must refuse, mixed with good orders.
struct Malformed {
    orders_conn: Vec<u8>,
    nbbo_conn: Vec<u8>,
    /// Frames sent in all.
    frames: usize,
    /// Of those, the refused ones.
    bad: usize,
    /// The outputs of the good ones.
    expected: Vec<OrderResult>,
    /// What stderr must say about them.
    messages: Vec<&'static str>,
}

impl Malformed {
    fn new(data: &DataSet) -> Malformed {
        let mut rejected: Vec<_> = data.rejected.iter().collect();
        rejected.sort_by_key(|(s, _)| **s);
        let (&sym, &(bid, offer)) = rejected[0];
        let good = |n| Order::new(2, 42, test_order_id(b'G', n), sym, 10.0, 5.0, TIME);
        let order_bytes = |n| good(n).as_bytes().to_vec();
        let nbbo_bytes = data.initial[0].as_bytes().to_vec();

        let mut unknown_type = order_bytes(90);
        unknown_type[0] = 3;
        let mut long_order = order_bytes(91);
        long_order.push(0);
        let mut type9 = nbbo_bytes.clone();
        type9[0] = 9;
        let orders_frames: Vec<Vec<u8>> = vec![
            unknown_type,
            order_bytes(0),
            order_bytes(92)[..52].to_vec(),
            nbbo_bytes.clone(),
            Vec::new(),
            order_bytes(1),
            long_order,
        ];
        // A good NBBO here repeats a non-rejected symbol's initial record: it changes nothing.
        let accepted = data
            .initial
            .iter()
            .find(|n| !data.rejected.contains_key(n.symbol()))
            .unwrap();
        let nbbo_frames: Vec<Vec<u8>> = vec![
            order_bytes(93),
            accepted.as_bytes().to_vec(),
            nbbo_bytes[..41].to_vec(),
            type9,
        ];
        let concat = |frames: &[Vec<u8>]| frames.iter().flat_map(|f| frame(f)).collect();
        Malformed {
            orders_conn: concat(&orders_frames),
            nbbo_conn: concat(&nbbo_frames),
            frames: orders_frames.len() + nbbo_frames.len(),
            bad: 8,
            expected: (0..2)
                .map(|n| OrderResult::new(&good(n).decoded(), bid, offer, 0))
                .collect(),
            messages: vec![
                "source Orders connection",
                "decode error: Orders source: not an order: unknown fixish message type 3",
                "decode error: Orders source: not an order: order payload must be 53 bytes, got 52",
                "decode error: Orders source: got an NBBO message (type 2)",
                "decode error: Orders source: not an order: empty fixish payload",
                "decode error: Orders source: not an order: order payload must be 53 bytes, got 54",
                "source Nbbo connection",
                "decode error: Nbbo source: got an order (type 1)",
                "decode error: Nbbo source: not an NBBO: NBBO payload must be 42 bytes, got 41",
                "decode error: Nbbo source: not an NBBO: unknown fixish message type 9",
            ],
        }
    }
}

/// One whole run: start, prime, send everything, stop, and check every output and counter.
fn run(name: &str, cores: &str, shards: usize, with_malformed: bool) {
    let data = DataSet::generate(name);
    data.assert_rejected_cover(shards);
    let malformed = with_malformed.then(|| Malformed::new(&data));
    let sink = ResultSink::bind();
    let out = sink.addr.to_string();
    let started_ns = wall_clock_ns();
    let engine = Engine::start(&[
        "market-spread",
        "--in",
        "Orders@127.0.0.1:0,Nbbo@127.0.0.1:0",
        "--out",
        &out,
        "--cores",
        cores,
        "--no-pin",
    ]);
    let shard_lines: Vec<_> = engine
        .preamble
        .iter()
        .filter(|l| l.starts_with("shard ") && l.ends_with(" unpinned"))
        .collect();
    assert_eq!(shard_lines.len(), shards, "{:?}", engine.preamble);

    let probe_results = prime(&engine, &sink, &data);
    let probes = probe_results.len();

    let mut senders = send_split(engine.addr(ORDERS_SOURCE), &data.orders, 57, 4);
    senders.extend(send_split(engine.addr(NBBO_SOURCE), &data.updates, 46, 2));
    let mut expected = data.expected.clone();
    if let Some(m) = &malformed {
        senders.push(send_in_background(
            engine.addr(ORDERS_SOURCE),
            m.orders_conn.clone(),
        ));
        senders.push(send_in_background(
            engine.addr(NBBO_SOURCE),
            m.nbbo_conn.clone(),
        ));
        expected.extend(m.expected.iter().copied());
    }
    for s in senders {
        s.join().unwrap();
    }
    let total = probes + expected.len();
    sink.wait_for(total, "all results");

    let (status, stderr) = engine.stop();
    let finished_ns = wall_clock_ns();
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    let (results, connections) = sink.finish();
    assert!(
        (1..=shards).contains(&connections),
        "{connections} sink connections for {shards} shard(s)"
    );
    assert_eq!(
        results.len(),
        total,
        "extra results after the expected ones"
    );

    let is_probe = |r: &&OrderResult| r.order_id.starts_with(b"#P");
    assert_eq!(
        sorted_keys(results.iter().filter(is_probe)),
        sorted_keys(&probe_results)
    );
    assert_eq!(
        sorted_keys(results.iter().filter(|r| !is_probe(r))),
        sorted_keys(&expected),
        "the outputs differ from the reference model"
    );
    for r in &results {
        assert!(
            (started_ns..=finished_ns).contains(&r.timestamp),
            "timestamp {} outside the run",
            r.timestamp
        );
    }

    let (bad, malformed_frames) = malformed.as_ref().map_or((0, 0), |m| (m.bad, m.frames));
    let messages_in = data.initial.len() + probes + data.order_count + data.update_count;
    let messages_in = (messages_in + malformed_frames) as u64;
    assert_eq!(
        summary_count(&stderr, "messages in"),
        messages_in,
        "{stderr}"
    );
    assert_eq!(summary_count(&stderr, "out"), total as u64, "{stderr}");
    assert_eq!(summary_count(&stderr, "decode"), bad as u64, "{stderr}");
    assert_eq!(
        summary_count(&stderr, "filtered"),
        messages_in - bad as u64 - total as u64,
        "{stderr}"
    );
    assert_eq!(summary_count(&stderr, "oversized frame"), 0, "{stderr}");
    assert_eq!(summary_count(&stderr, "cut mid-frame"), 0, "{stderr}");
    if let Some(m) = &malformed {
        for needle in &m.messages {
            assert!(
                stderr.contains(needle),
                "no {needle:?} in stderr:\n{stderr}"
            );
        }
        let reported = stderr
            .lines()
            .filter(|l| l.contains("decode error"))
            .count();
        assert_eq!(reported, bad, "one line per refused record:\n{stderr}");
    } else {
        assert!(!stderr.contains("decode error"), "{stderr}");
    }
}

#[test]
fn one_shard_matches_the_reference_model() {
    run("one-shard", "0", 1, false);
}

#[test]
fn two_shards_match_the_reference_model() {
    run("two-shards", "0,1", 2, false);
}

/// More shards than cores, unpinned: every key crosses through the exchange's route cache to
/// one of 3 or 4 shards, sorted by shard in each batch and sent in a run per shard, and every
/// output must still be exactly the model's.
#[test]
fn three_and_four_shards_match_the_reference_model() {
    run("three-shards", "0,1,2", 3, false);
    run("four-shards", "0,1,2,3", 4, false);
}

#[test]
fn malformed_records_are_logged_counted_and_skipped() {
    run("malformed", "0,1", 2, true);
}

#[test]
fn unnamed_or_missing_sources_are_clear_errors() {
    let bin = env!("CARGO_BIN_EXE_bettong");
    for (inputs, needle) in [
        ("127.0.0.1:0", "give --in Orders@HOST:PORT,Nbbo@HOST:PORT"),
        ("Orders@127.0.0.1:0", "no address for source Nbbo"),
        (
            "Orders@127.0.0.1:0,Nbbo@127.0.0.1:0,Quotes@127.0.0.1:0",
            "does not have (it has Orders, Nbbo)",
        ),
    ] {
        let out = Command::new(bin)
            .args(["market-spread", "--in", inputs, "--out", "127.0.0.1:9"])
            .args(["--cores", "0", "--no-pin"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{inputs}: {stderr}");
        assert!(stderr.contains(needle), "{inputs}: {stderr}");
    }
}

/// A child process that is killed if the test fails before it exits.
struct Proc(Child);

impl Proc {
    fn wait(mut self) -> (std::process::ExitStatus, String, String) {
        let until = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < until, "process did not exit");
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = self.0.stdout.take() {
            o.read_to_string(&mut out).unwrap();
        }
        if let Some(mut e) = self.0.stderr.take() {
            e.read_to_string(&mut err).unwrap();
        }
        (status, out, err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bettong(args: &[&str]) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_bettong"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// The documented workflow with the command-line tools alone: `gen market-spread`, `receive`
/// as the sink, `send` for the input. With no NBBO at all every order is rejected with bid and
/// offer 0, so the expected output does not depend on timing.
#[test]
fn command_line_tools_drive_a_run() {
    let dir = temp_dir("cli");
    let dir_text = dir.to_str().unwrap();
    let (status, out, err) = bettong(&[
        "gen",
        "market-spread",
        "--out",
        dir_text,
        "--symbols",
        "20",
        "--orders",
        "1_000",
        "--nbbo",
        "0",
        "--rejected",
        "2",
    ])
    .wait();
    assert!(status.success(), "{err}");
    assert!(out.contains("a run must produce 1 order results"), "{out}");

    let capture = dir.join("results.bin");
    let mut receiver = bettong(&[
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--framed",
        "--output",
        capture.to_str().unwrap(),
        "--expect",
        "1000",
    ]);
    let mut line = String::new();
    BufReader::new(receiver.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let sink = line.trim().strip_prefix("listening ").unwrap().to_string();

    let engine = Engine::start(&[
        "market-spread",
        "--in",
        "Orders@127.0.0.1:0,Nbbo@127.0.0.1:0",
        "--out",
        &sink,
        "--cores",
        "0,1",
        "--no-pin",
    ]);
    let orders_addr = engine.addr(ORDERS_SOURCE).to_string();
    let orders_file = dir.join(ORDERS_FILE);
    let (status, out, err) = bettong(&[
        "send",
        "--host",
        &orders_addr,
        "--file",
        orders_file.to_str().unwrap(),
        "--binary",
        "--msg-size",
        "57",
        "--messages",
        "1000",
        "--batch-size",
        "250",
        "--interval",
        "1_000_000",
        "--no-write",
    ])
    .wait();
    assert!(status.success(), "{err}");
    assert!(out.contains("Connected"), "{out}");
    assert!(out.contains("Sent 1000 messages"), "{out}");

    let (status, out, err) = receiver.wait();
    assert!(status.success(), "{err}");
    assert!(out.contains("Received 1000 messages"), "{out}");
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(summary_count(&stderr, "out"), 1000, "{stderr}");

    // The receiver writes each frame's payload followed by a newline.
    let captured = std::fs::read(&capture).unwrap();
    assert_eq!(captured.len(), 1000 * (ORDER_RESULT_PAYLOAD_LEN + 1));
    let results: Vec<OrderResult> = captured
        .chunks_exact(ORDER_RESULT_PAYLOAD_LEN + 1)
        .map(|c| {
            assert_eq!(c[ORDER_RESULT_PAYLOAD_LEN], b'\n');
            OrderResult::decode(&c[..ORDER_RESULT_PAYLOAD_LEN]).unwrap()
        })
        .collect();
    let orders = std::fs::read(&orders_file).unwrap();
    let expected: Vec<OrderResult> = payloads(&orders)
        .into_iter()
        .map(|p| OrderResult::new(&Order::from_payload(p).unwrap().decoded(), 0.0, 0.0, 0))
        .collect();
    assert_eq!(sorted_keys(&results), sorted_keys(&expected));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench market-spread` on 3, 4 and 8 unpinned shards with 64-slot rings, so that the exchange
/// spills (runs per shard that do not fit) and its sources pause: every input is counted in and
/// finished (the bench waits for that), the OrderResult count is the data's, and the report's
/// pauses reach its JSON.
#[test]
fn bench_with_tiny_rings_on_three_four_and_eight_shards_loses_nothing() {
    use bettong_giles::bench::{self, BenchArgs};
    let dir = temp_dir("bench-tiny-rings");
    for shards in [3, 4, 8] {
        let mut args = BenchArgs::new(200_000);
        args.shards = Some(shards);
        args.no_pin = true;
        args.ring_capacity = Some(64);
        let json = dir.join(format!("ms-{shards}.json"));
        args.json = Some(json.clone());
        let report = bench::market_spread(&args).unwrap_or_else(|e| panic!("{shards} shards: {e}"));
        assert_eq!(report.shards, shards);
        // The timed messages and the 350 symbols' priming NBBO.
        assert_eq!(report.messages_in, 200_000 + 350, "{shards} shards");
        assert_eq!(report.messages_out, report.expected_out, "{shards} shards");
        assert!(report.expected_out > 0);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(json["pauses"], report.summary.pauses, "{shards} shards");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
