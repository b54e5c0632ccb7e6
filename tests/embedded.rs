//! Embedding: in-process sources and sinks, lifecycle, and Market Spread in-process giving the
//! same results as over TCP.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bettong::runtime::config::EngineConfig;
use bettong::PushError;
use bettong::{Application, CallbackSink, Engine, InProcessSource, Pipeline, PolledSink};
use bettong_apps::market_spread::{
    self, decode, spread_check, symbol_key, MarketMessage, OrderResult,
};
use bettong_giles::gen::{self, GenMarketSpreadArgs};
use common::{result_key, wait_finished, ResultKey};

fn config(shards: usize) -> EngineConfig {
    EngineConfig {
        cores: (0..shards).collect(),
        pin: false,
        ..EngineConfig::default()
    }
}

/// Cuts a file of framed records into payloads.
fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        out.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    out
}

struct Data {
    initial: Vec<u8>,
    nbbo: Vec<u8>,
    orders: Vec<u8>,
    symbols: u64,
    expected: u64,
}

fn market_data() -> Data {
    let dir = std::env::temp_dir().join(format!("bettong-embedded-{}", std::process::id()));
    let mut g = GenMarketSpreadArgs::new(&dir);
    g.symbols = 100;
    g.rejected = 6;
    g.orders = 30_000;
    g.nbbo = 30_000;
    g.rejected_orders = Some(300);
    let s = gen::generate(&g).unwrap();
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    let data = Data {
        initial: read(gen::INITIAL_NBBO_FILE),
        nbbo: read(gen::NBBO_FILE),
        orders: read(gen::ORDERS_FILE),
        symbols: s.symbols as u64,
        expected: s.expected_out,
    };
    let _ = std::fs::remove_dir_all(&dir);
    data
}

fn over_tcp(data: &Data, shards: usize) -> BTreeSet<ResultKey> {
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(shards);
    cfg.inputs = vec![
        (Some("Orders".into()), "127.0.0.1:0".parse().unwrap()),
        (Some("Nbbo".into()), "127.0.0.1:0".parse().unwrap()),
    ];
    cfg.outputs = vec![(None, sink.local_addr().unwrap().into())];
    // A shard connects to the sink only once it has output, so accept until the engine has
    // stopped (by then every connection it made is in the accept queue).
    let stopped = Arc::new(AtomicBool::new(false));
    let done = stopped.clone();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut readers = Vec::new();
        sink.set_nonblocking(true).unwrap();
        loop {
            match sink.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    readers.push(std::thread::spawn(move || {
                        let mut v = Vec::new();
                        c.read_to_end(&mut v).unwrap();
                        v
                    }));
                }
                Err(_) if done.load(Ordering::SeqCst) => break,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        for r in readers {
            all.extend(r.join().unwrap());
        }
        all
    });
    let engine = Engine::start(market_spread::application(), cfg).unwrap();
    let addr = |n: &str| engine.sources().iter().find(|(s, _)| s == n).unwrap().1;
    TcpStream::connect(addr("Nbbo"))
        .unwrap()
        .write_all(&data.initial)
        .unwrap();
    wait_finished(&engine, data.symbols);
    let (o, n) = (addr("Orders"), addr("Nbbo"));
    std::thread::scope(|s| {
        s.spawn(|| {
            TcpStream::connect(o)
                .unwrap()
                .write_all(&data.orders)
                .unwrap()
        });
        s.spawn(|| {
            TcpStream::connect(n)
                .unwrap()
                .write_all(&data.nbbo)
                .unwrap()
        });
    });
    let summary = engine.stop().unwrap();
    stopped.store(true, Ordering::SeqCst);
    assert_eq!(summary.messages_out, data.expected);
    let bytes = reader.join().unwrap();
    records(&bytes)
        .into_iter()
        .map(|p| result_key(&OrderResult::decode(p).unwrap()))
        .collect()
}

fn in_process(data: &Data, shards: usize) -> BTreeSet<ResultKey> {
    let market = InProcessSource::new(symbol_key);
    let (sink, mut results) = PolledSink::<OrderResult>::new(256);
    let app = Application::new(
        "embedded spread check",
        spread_check(Pipeline::source("Market", market.clone())).to_sink("Results", sink),
    );
    let engine = Engine::start(app, config(shards)).unwrap();
    let mut pusher = market.pusher().unwrap();
    for r in records(&data.initial) {
        pusher.push(decode(r).unwrap()).unwrap();
    }
    wait_finished(&engine, data.symbols);
    let mut got = BTreeSet::new();
    std::thread::scope(|s| {
        for file in [&data.orders, &data.nbbo] {
            let mut p = market.pusher().unwrap();
            s.spawn(move || {
                for r in records(file) {
                    let msg: MarketMessage = decode(r).unwrap();
                    p.push(msg).unwrap();
                }
            });
        }
        // The host drains outputs while the pushers run (the rings are small, so a host that
        // did not would hold the engine back, never lose outputs).
        let until = Instant::now() + Duration::from_secs(60);
        while (got.len() as u64) < data.expected {
            results.poll(|r| {
                got.insert(result_key(&r));
            });
            assert!(Instant::now() < until, "outputs did not arrive");
        }
    });
    drop(pusher);
    let summary = engine.stop().unwrap();
    results.poll(|r| {
        got.insert(result_key(&r));
    });
    assert!(results.is_finished());
    assert_eq!(summary.messages_out, data.expected);
    assert_eq!(summary.messages_in, data.symbols + 60_000);
    got
}

#[test]
fn embedded_market_spread_matches_tcp() {
    let data = market_data();
    for shards in [1, 2] {
        let tcp = over_tcp(&data, shards);
        let embedded = in_process(&data, shards);
        assert_eq!(tcp.len() as u64, data.expected);
        assert_eq!(embedded, tcp, "{shards} shard(s)");
    }
}

/// Two host threads push (thread, key, seq) into 2 shards; the state checks each thread's
/// sequence per key arrives in order; every message comes out once, across a stop.
#[test]
fn two_host_threads_keep_per_key_order_and_lose_nothing() {
    pushed_sequences_keep_order_and_lose_nothing(2, 2, 50_000, |m: &(usize, u64, u64)| &m.1);
}

/// Pushers routed by one key into a `key_by` on another: every pusher's messages reach one
/// shard (the source's key is the pushing thread) and the exchange there splits each run it
/// takes from the ring, sending most messages on to the shards that own their keys. On 2, 3
/// and 4 unpinned shards: per (thread, key) the sequence arrives in order, and every message
/// comes out once.
#[test]
fn pushed_runs_split_by_another_key_keep_order_and_lose_nothing() {
    for shards in [2, 3, 4] {
        pushed_sequences_keep_order_and_lose_nothing(shards, 3, 20_000, |m: &(usize, u64, u64)| {
            &m.0
        });
    }
}

/// `threads` host threads each push `per_thread` messages `(thread, key, seq)` over 37 keys
/// into an `InProcessSource` keyed by `source_key`, then a `key_by` on the key into a state
/// that checks each (thread, key) sequence; the host drains the outputs while it pushes (its
/// small rings would otherwise hold the engine, and so the pushers, back: backpressure, never
/// loss). Every sequence arrives in order, and every message comes out once, across a stop.
fn pushed_sequences_keep_order_and_lose_nothing<K>(
    shards: usize,
    threads: usize,
    per_thread: u64,
    source_key: impl Fn(&(usize, u64, u64)) -> &K + Send + Sync + 'static,
) where
    K: bettong::Key + ?Sized + 'static,
{
    const KEYS: u64 = 37;
    /// The last sequence number seen per thread.
    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct Last(Vec<u64>);
    let source = InProcessSource::new(source_key);
    let (sink, mut outputs) = PolledSink::new(64);
    let app = Application::new(
        "order check",
        Pipeline::source("Seq", source.clone())
            .key_by(|m: &(usize, u64, u64)| &m.1)
            .to_state(|(t, k, seq): (usize, u64, u64), last: &mut Last| {
                if last.0.len() <= t {
                    last.0.resize(t + 1, 0);
                }
                let in_order = seq == last.0[t] + 1;
                last.0[t] = seq;
                Some((t, k, seq, in_order))
            })
            .to_sink("Out", sink),
    );
    let engine = Engine::start(app, config(shards)).unwrap();
    let mut seen = vec![vec![0u64; KEYS as usize]; threads];
    let mut count = 0u64;
    let mut check = |(t, k, seq, in_order): (usize, u64, u64, bool)| {
        assert!(
            in_order,
            "{shards} shards: thread {t} key {k}: {seq} out of order"
        );
        seen[t][k as usize] += 1;
    };
    std::thread::scope(|s| {
        let pushers: Vec<_> = (0..threads)
            .map(|t| {
                let mut p = source.pusher().unwrap();
                s.spawn(move || {
                    let mut next = [0u64; KEYS as usize];
                    for i in 0..per_thread {
                        let k = (i * 7 + t as u64) % KEYS;
                        next[k as usize] += 1;
                        p.push((t, k, next[k as usize])).unwrap();
                    }
                })
            })
            .collect();
        while pushers.iter().any(|p| !p.is_finished()) {
            count += outputs.poll(&mut check) as u64;
        }
    });
    let summary = engine.stop().unwrap();
    count += outputs.poll(&mut check) as u64;
    let all = threads as u64 * per_thread;
    assert_eq!(count, all, "{shards} shards");
    assert_eq!(summary.messages_out, all, "{shards} shards");
    for (t, per_key) in seen.iter().enumerate() {
        assert_eq!(
            per_key.iter().sum::<u64>(),
            per_thread,
            "{shards} shards, thread {t}"
        );
    }
}

/// A stop that lands while host threads push as fast as they can (with `push`, `try_push`
/// and `push_batch`) loses nothing that was accepted: every message a push took is counted
/// in and reaches the sink, and every other one comes back as stopped. This is the close
/// handshake of `Pusher` (a light barrier per push, a heavy one per stop), tried many times
/// on 1 to 4 unpinned shards.
#[test]
fn a_stop_during_pushes_loses_nothing_that_was_accepted() {
    const HOSTS: u64 = 2;
    for shards in 1..=4 {
        for round in 0..4u64 {
            let (count, sum) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let (c, s) = (count.clone(), sum.clone());
            // (key, value): 1024 keys, unique values.
            let source = InProcessSource::new(|m: &(u64, u64)| &m.0);
            let app = Application::new(
                "accepted",
                Pipeline::source("N", source.clone())
                    .key_by(|m: &(u64, u64)| &m.0)
                    .to_state(|(_, n): (u64, u64), seen: &mut u64| {
                        *seen += 1;
                        Some(n)
                    })
                    .to_sink(
                        "Out",
                        CallbackSink::new(move |n: &u64| {
                            c.fetch_add(1, Ordering::Relaxed);
                            s.fetch_add(*n, Ordering::Relaxed);
                        }),
                    ),
            );
            let engine = Engine::start(app, config(shards)).unwrap();
            let pushed = Arc::new(AtomicU64::new(0));
            let hosts: Vec<_> = (0..HOSTS)
                .map(|h| {
                    let mut p = source.pusher().unwrap();
                    let pushed = pushed.clone();
                    std::thread::spawn(move || {
                        // Values h, h + HOSTS, h + 2 HOSTS, ...: unique across hosts.
                        let (mut next, mut n, mut total) = (h, 0u64, 0u64);
                        let mut take = |v: u64| {
                            n += 1;
                            total += v;
                            pushed.fetch_add(1, Ordering::Relaxed);
                        };
                        let m = |v: u64| (v % 1024, v);
                        loop {
                            let stopped = match next / HOSTS % 3 {
                                0 => p.push(m(next)).map(|()| take(next)).is_err(),
                                1 => match p.try_push(m(next)) {
                                    Ok(()) => {
                                        take(next);
                                        false
                                    }
                                    Err(PushError::Full(_)) => continue,
                                    Err(PushError::Stopped(_)) => true,
                                },
                                _ => {
                                    let batch: Vec<(u64, u64)> =
                                        (0..16).map(|i| m(next + i * HOSTS)).collect();
                                    next += 15 * HOSTS;
                                    match p.push_batch(batch.clone()) {
                                        Ok(()) => batch.iter().for_each(|&(_, v)| take(v)),
                                        Err(PushError::Stopped(back)) => {
                                            let taken = batch.len() - back.len();
                                            assert_eq!(back[..], batch[taken..]);
                                            batch[..taken].iter().for_each(|&(_, v)| take(v));
                                            break;
                                        }
                                        Err(PushError::Full(_)) => unreachable!(),
                                    }
                                    false
                                }
                            };
                            if stopped {
                                break;
                            }
                            next += HOSTS;
                        }
                        (n, total)
                    })
                })
                .collect();
            // Stop once the hosts are well under way, at a point that differs by round.
            let target = 20_000 * (round + 1);
            while pushed.load(Ordering::Relaxed) < target {
                std::hint::spin_loop();
            }
            let summary = engine.stop().unwrap();
            let (mut accepted, mut accepted_sum) = (0, 0);
            for h in hosts {
                let (n, total) = h.join().unwrap();
                accepted += n;
                accepted_sum += total;
            }
            let at = format!("{shards} shard(s), round {round}");
            assert!(accepted >= target, "{at}: {accepted} accepted");
            assert_eq!(summary.messages_in, accepted, "{at}: counted in");
            assert_eq!(count.load(Ordering::Relaxed), accepted, "{at}: at the sink");
            assert_eq!(
                sum.load(Ordering::Relaxed),
                accepted_sum,
                "{at}: which ones"
            );
        }
    }
}

/// Dropping the engine without stopping it still processes everything pushed; a push after
/// the stop hands the message back.
#[test]
fn drop_stops_cleanly_and_late_pushes_come_back() {
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    let source = InProcessSource::new(|n: &u64| n);
    let app = Application::new(
        "count",
        Pipeline::source("N", source.clone())
            .to(|n: u64| Some(n))
            .to_sink(
                "Out",
                CallbackSink::new(move |_: &u64| {
                    s.fetch_add(1, Ordering::Relaxed);
                }),
            ),
    );
    let engine = Engine::start(app, config(2)).unwrap();
    let mut p = source.pusher().unwrap();
    for n in 0..10_000u64 {
        p.push(n).unwrap();
    }
    drop(engine);
    assert_eq!(seen.load(Ordering::Relaxed), 10_000);
    assert_eq!(p.push(7), Err(PushError::Stopped(7)));
}

#[test]
fn pusher_before_start_is_an_error() {
    let source = InProcessSource::new(|n: &u64| n);
    assert!(source.pusher().is_err());
}

/// `push_batch` over full rings (a slow polled sink holds the shards back) loses nothing and
/// keeps per-key order; after the stop the whole batch comes back.
#[test]
fn push_batch_waits_on_full_rings_and_hands_back_after_a_stop() {
    // 4 shards on this 2-core machine: pushers that block on full rings while the shards
    // share cores with them and with each other.
    for shards in [2, 4] {
        let source = InProcessSource::new(|m: &(u64, u64)| &m.0);
        let (sink, mut outputs) = PolledSink::new(64);
        let app = Application::new(
            "batches",
            Pipeline::source("Pairs", source.clone())
                .key_by(|m: &(u64, u64)| &m.0)
                .to_state(|m: (u64, u64), last: &mut u64| {
                    assert!(m.1 > *last || *last == 0, "per-key order");
                    *last = m.1;
                    Some(m)
                })
                .to_sink("Out", sink),
        );
        let engine = Engine::start(app, config(shards)).unwrap();
        let mut pusher = source.pusher().unwrap();
        let total = 20_000u64;
        let batch: Vec<(u64, u64)> = (1..=total).map(|i| (i % 7, i)).collect();
        let host = std::thread::spawn(move || {
            pusher.push_batch(batch).unwrap();
            pusher
        });
        let mut got = Vec::new();
        while (got.len() as u64) < total {
            outputs.poll(|o| got.push(o));
            std::thread::yield_now();
        }
        let mut pusher = host.join().unwrap();
        let summary = engine.stop().unwrap();
        assert_eq!(summary.messages_in, total);
        got.sort_unstable();
        let mut want: Vec<(u64, u64)> = (1..=total).map(|i| (i % 7, i)).collect();
        want.sort_unstable();
        assert!(
            got == want,
            "{shards} shards: {} outputs, {} expected",
            got.len(),
            want.len()
        );
        match pusher.push_batch(vec![(1, 1), (2, 2)]) {
            Err(PushError::Stopped(back)) => assert_eq!(back, vec![(1, 1), (2, 2)]),
            other => panic!("{other:?}"),
        }
    }
}

/// With `--poll spin` and `spin:MICROS` the in-process source looks at its rings itself
/// between drains (and, with a window, parks once it has seen nothing for that long): bursts
/// pushed with idle stretches in between all come through, on 1 and 2 shards, and the stop
/// ends the spinning.
#[test]
fn spinning_shards_take_every_burst_and_stop() {
    use bettong::runtime::config::Poll;
    for (shards, poll) in [
        (1, Poll::Spin),
        (2, Poll::Spin),
        (1, Poll::SpinFor(Duration::from_micros(50))),
        (2, Poll::SpinFor(Duration::from_micros(50))),
    ] {
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        let source = InProcessSource::new(|n: &u64| n);
        let app = Application::new(
            "spin",
            Pipeline::source("N", source.clone())
                .key_by(|n: &u64| n)
                .to_state(|n: u64, c: &mut u64| {
                    *c += 1;
                    Some(n)
                })
                .to_sink(
                    "Out",
                    CallbackSink::new(move |_: &u64| {
                        s.fetch_add(1, Ordering::Relaxed);
                    }),
                ),
        );
        let engine = Engine::start(
            app,
            EngineConfig {
                poll,
                ..config(shards)
            },
        )
        .unwrap();
        let mut p = source.pusher().unwrap();
        let mut pushed = 0u64;
        for burst in 0..20u64 {
            for n in 0..=burst * 50 {
                p.push(n).unwrap();
                pushed += 1;
            }
            // Wait for the burst to come out; the shard then idles past its spin window
            // before the next one (a SpinFor shard parks and must be woken again).
            wait_finished(&engine, pushed);
            let idle_until = Instant::now() + Duration::from_micros(200);
            while Instant::now() < idle_until {
                std::hint::spin_loop();
            }
        }
        drop(p);
        let summary = engine.stop().unwrap();
        assert_eq!(
            seen.load(Ordering::Relaxed),
            pushed,
            "{shards} shards, {poll:?}"
        );
        assert_eq!(summary.messages_out, pushed);
    }
}

/// An in-process message's start-to-end latency starts when its shard takes it from the
/// pusher's ring, as a TCP frame's starts when the shard reads it from the socket: time spent
/// waiting in the ring is not in it (a host measures push to output itself). Every message is
/// still timed once. The first message's computation holds its shard until 30 ms after the
/// host has pushed 1000 more behind it, so had the clock started at the push, most of them
/// would read 30 ms or more.
#[test]
fn in_process_latency_starts_when_the_shard_takes_the_message() {
    const BEHIND: u64 = 1000;
    const HELD: Duration = Duration::from_millis(30);
    for shards in [1, 3] {
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Mutex::new(Some((started_tx, go_rx)));
        let source = InProcessSource::new(|_: &u64| "one key");
        let (sink, mut outputs) = PolledSink::new(4096);
        let app = Application::new(
            "held",
            Pipeline::source("N", source.clone())
                .to(move |n: u64| {
                    // The first message only: tell the host, then wait for it.
                    if let Some((started, go)) = gate.lock().unwrap().take() {
                        started.send(()).unwrap();
                        go.recv().unwrap();
                    }
                    Some(n)
                })
                .to_sink("Out", sink),
        );
        let engine = Engine::start(app, config(shards)).unwrap();
        let mut p = source.pusher().unwrap();
        p.push(0).unwrap();
        started_rx.recv().unwrap();
        for n in 1..=BEHIND {
            p.push(n).unwrap();
        }
        let pushed = Instant::now();
        while pushed.elapsed() < HELD {
            std::hint::spin_loop();
        }
        go_tx.send(()).unwrap();
        drop(p);
        wait_finished(&engine, BEHIND + 1);
        let summary = engine.stop().unwrap();
        let mut got = 0;
        outputs.poll(|_| got += 1);
        assert_eq!(got, BEHIND + 1, "{shards} shard(s)");
        assert_eq!(summary.latency.len(), BEHIND + 1, "{shards} shard(s)");
        let p50 = Duration::from_nanos(summary.latency.value_at_quantile(0.5));
        assert!(p50 < HELD / 3, "{shards} shard(s): p50 {p50:?}");
        // The held message itself waited in its computation: that is in its latency.
        let max = Duration::from_nanos(summary.latency.max());
        assert!(max >= HELD, "{shards} shard(s): max {max:?}");
    }
}

/// A computation that panics fails its shard, and the engine's `join` says so instead of
/// waiting for that shard for ever: on 1 shard at once; on 2 and 3 once the others have stopped
/// or the drain timeout (here 1 s) has passed, whichever is first (they may wait for the failed
/// shard's messages). Dropping such an engine returns too. Before, `join` never returned: the
/// shard's summary channel stayed open in a glommio task that the panic left behind.
#[test]
fn a_panicking_computation_fails_the_engine_instead_of_hanging_it() {
    for (shards, drop_it) in [(1, false), (2, false), (3, false), (2, true)] {
        let armed = Arc::new(AtomicBool::new(false));
        let fuse = armed.clone();
        let fired = AtomicBool::new(false);
        // Endless: no shard ends by itself.
        let numbers = bettong::IterSource::new(|shard, shards| (shard as u64..).step_by(shards));
        let (sink, _outputs) = PolledSink::new(1 << 16);
        let app = Application::new(
            "panics",
            Pipeline::source("Numbers", numbers)
                .key_by(|n: &u64| n)
                .to_state(move |n: u64, seen: &mut u64| {
                    *seen += 1;
                    // Once armed, the first message of any shard panics, and only that one.
                    let fail = fuse.load(Ordering::Relaxed) && !fired.swap(true, Ordering::Relaxed);
                    assert!(!fail, "the computation fails at {n}");
                    (n % 1_000 == 0).then_some(n)
                })
                .to_sink("Out", sink),
        );
        let config = EngineConfig {
            drain_timeout: Some(Duration::from_secs(1)),
            ..config(shards)
        };
        let engine = Engine::start(app, config).unwrap();
        armed.store(true, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = if drop_it {
                drop(engine);
                Ok(bettong::Summary::default())
            } else {
                engine.join()
            };
            let _ = tx.send(result.map(|_| ()).map_err(|e| e.to_string()));
        });
        let result = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{shards} shards: the engine hung after a shard failed"));
        if drop_it {
            continue;
        }
        let err = result.expect_err("a failed shard must fail the join");
        assert!(err.contains("failed (panicked)"), "{shards} shards: {err}");
        if shards == 1 {
            assert_eq!(err, "shard 0 failed (panicked)");
        }
    }
}
