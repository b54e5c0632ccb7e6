//! `bettong vwap` over TCP: every output line compared with a reference model written here,
//! for tumbling and sliding windows, with and without delay, each late-data policy, count
//! windows, the quiet-input timeout and the flush at SIGTERM, on 1, 2 and 3 shards.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bettong_apps::market_spread::{pad_symbol, Order};
use common::{Engine, Sink, DEADLINE};

/// An order's symbol, event time (ms since the epoch), quantity and price.
type Ev = (&'static str, u64, f64, f64);

/// The transact time of `ms` since the epoch, as fixish writes it.
fn transact(ms: u64) -> [u8; 21] {
    bettong_giles::gen_vwap::format_transact_time(ms * 1_000_000)
}

fn frames(events: &[Ev]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (sym, ms, qty, price)) in events.iter().enumerate() {
        let id = format!("{:06}", i % 1_000_000);
        let order = Order::new(
            1,
            7,
            id.as_bytes().try_into().unwrap(),
            pad_symbol(sym),
            *qty,
            *price,
            transact(*ms),
        );
        order.encode_framed(&mut out);
    }
    out
}

/// The model: one line per symbol and range window `[k·slide, k·slide + range)` (ms) that
/// holds at least one of `events`.
fn model(events: &[Ev], range: u64, slide: u64) -> Vec<String> {
    let mut windows: BTreeMap<(&str, u64), (u64, f64, f64)> = BTreeMap::new();
    for (sym, t, qty, price) in events {
        let last = t / slide;
        let first = (t + slide).saturating_sub(range) / slide;
        let first = if (t + slide) < range { 0 } else { first };
        for k in first..=last {
            let start = k * slide;
            if start <= *t && *t < start + range {
                let w = windows.entry((sym, start)).or_default();
                w.0 += 1;
                w.1 += qty;
                w.2 += qty * price;
            }
        }
    }
    let mut lines: Vec<String> = windows
        .into_iter()
        .map(|((sym, start), (n, qty, notional))| {
            format!(
                "{sym},{start},{},{n},{qty},{:.6}",
                start + range,
                notional / qty
            )
        })
        .collect();
    lines.sort();
    lines
}

fn sorted_lines(bytes: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn start(cores: &str, sink: &Sink, flags: &[&str]) -> Engine {
    let addr = sink.addr.to_string();
    let mut args = vec![
        "vwap",
        "--in",
        "127.0.0.1:0",
        "--out",
        &addr,
        "--cores",
        cores,
        "--no-pin",
        "--metrics-interval",
        "0",
    ];
    args.extend_from_slice(flags);
    Engine::start(&args)
}

/// Sends each group of events over its own connection, all connections open at once.
fn send_over(engine: &Engine, groups: &[Vec<Ev>]) {
    let addr = engine.addr("Orders");
    let mut conns: Vec<TcpStream> = groups
        .iter()
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    for (c, g) in conns.iter_mut().zip(groups) {
        c.write_all(&frames(g)).unwrap();
    }
}

/// Waits until the sink has received `line`.
fn wait_for_line(sink: &Sink, line: &str) {
    let until = Instant::now() + DEADLINE;
    while !String::from_utf8_lossy(&sink.contents())
        .lines()
        .any(|l| l == line)
    {
        assert!(Instant::now() < until, "no `{line}` at the sink");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A day of trading in 2016, in ms since the epoch.
const T0: u64 = 1_472_808_600_000;

/// Many symbols, several connections, events in order per connection; the delay covers the
/// disorder between connections, so every window is exact. Nothing fires before the stop:
/// SIGTERM flushes every open window.
fn many() -> Vec<Vec<Ev>> {
    let syms = ["GE", "IBM", "AAPL", "MSFT", "T", "F"];
    (0..3)
        .map(|c| {
            (0..400u64)
                .map(|i| {
                    let sym = syms[((i * 7 + c) % syms.len() as u64) as usize];
                    let t = T0 + i * 37 + c * 11; // 15 s of event time
                    let qty = (1 + (i + c) % 9) as f64 * 100.0;
                    let price = 100.0 + ((i * 3 + c) % 17) as f64 * 0.25;
                    (sym, t, qty, price)
                })
                .collect()
        })
        .collect()
}

fn flushed_at_sigterm(cores: &str, window: &str, slide: &str, range: u64, slide_ms: u64) {
    let sink = Sink::bind();
    let engine = start(
        cores,
        &sink,
        &["--window", window, "--slide", slide, "--delay", "60m"],
    );
    let groups = many();
    send_over(&engine, &groups);
    let all: Vec<Ev> = groups.concat();
    // No window can fire before the stop (the delay is an hour): SIGTERM reads every
    // connection to its end and then fires them all.
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        sorted_lines(&sink.finish().concat()),
        model(&all, range, slide_ms),
        "{cores}: {window}/{slide}"
    );
}

#[test]
fn tumbling_windows_flushed_at_sigterm() {
    for cores in ["0", "0,1", "0,1,2"] {
        flushed_at_sigterm(cores, "1s", "1s", 1000, 1000);
    }
}

#[test]
fn sliding_windows_flushed_at_sigterm() {
    for cores in ["0", "0,1", "0,1,2"] {
        flushed_at_sigterm(cores, "3s", "1s", 3000, 1000);
    }
}

/// One connection, no delay: windows fire as the watermark passes their end, while the engine
/// runs; the last ones at the stop.
#[test]
fn windows_fire_on_the_watermark_without_delay() {
    for cores in ["0", "0,1", "0,1,2"] {
        for (window, slide, range, slide_ms) in [("1s", "1s", 1000, 1000), ("3s", "1s", 3000, 1000)]
        {
            let sink = Sink::bind();
            let engine = start(cores, &sink, &["--window", window, "--slide", slide]);
            let events: Vec<Ev> = (0..300u64)
                .map(|i| {
                    (
                        ["GE", "IBM"][(i % 2) as usize],
                        T0 + i * 31,
                        100.0,
                        10.0 + (i % 5) as f64,
                    )
                })
                .collect();
            send_over(&engine, std::slice::from_ref(&events));
            let want = model(&events, range, slide_ms);
            // A window fires while the engine runs: the first one, once later data passed it.
            wait_for_line(&sink, &want[0]);
            let (status, stderr) = engine.stop();
            assert!(status.success(), "{stderr}");
            assert_eq!(
                sorted_lines(&sink.finish().concat()),
                want,
                "{cores} {window}/{slide}"
            );
        }
    }
}

/// The late-data policies on a crafted sequence: GE at 0.1 s and 1.2 s (the second moves the
/// watermark past 1.0 s: window [0, 1 s) fires), then a late GE at 0.5 s, then GE at 1.5 s.
#[test]
fn late_data_policies() {
    let first = [
        ("GE", T0 + 100, 100.0, 10.0),
        ("GE", T0 + 1_200, 100.0, 20.0),
    ];
    let late = [("GE", T0 + 500, 300.0, 30.0)];
    let after = [("GE", T0 + 1_500, 100.0, 40.0)];
    let w0 = format!("GE,{T0},{},1,100,10.000000", T0 + 1000);
    for cores in ["0", "0,1", "0,1,2"] {
        for (policy, want) in [
            (
                "drop",
                vec![
                    w0.clone(),
                    format!("GE,{},{},2,200,30.000000", T0 + 1000, T0 + 2000),
                ],
            ),
            (
                "fire",
                vec![
                    w0.clone(),
                    format!("GE,{T0},{},1,300,30.000000", T0 + 1000),
                    format!("GE,{},{},2,200,30.000000", T0 + 1000, T0 + 2000),
                ],
            ),
            (
                "oldest",
                vec![
                    w0.clone(),
                    format!("GE,{},{},3,500,30.000000", T0 + 1000, T0 + 2000),
                ],
            ),
        ] {
            let sink = Sink::bind();
            let engine = start(cores, &sink, &["--late", policy]);
            let addr = engine.addr("Orders");
            let mut conn = TcpStream::connect(addr).unwrap();
            conn.write_all(&frames(&first)).unwrap();
            wait_for_line(&sink, &w0);
            conn.write_all(&frames(&late)).unwrap();
            conn.write_all(&frames(&after)).unwrap();
            drop(conn);
            let (status, stderr) = engine.stop();
            assert!(status.success(), "{stderr}");
            let mut want = want;
            want.sort();
            assert_eq!(
                sorted_lines(&sink.finish().concat()),
                want,
                "{cores} --late {policy}"
            );
            let late_count = common::summary_count(&stderr, "late");
            assert_eq!(
                late_count,
                u64::from(policy == "drop"),
                "{policy}: {stderr}"
            );
        }
    }
}

/// Count windows: each connection owns its symbols (so each symbol's order is fixed); every
/// 3 orders of a symbol make a window, and the stop flushes the remainders.
#[test]
fn count_windows() {
    for cores in ["0", "0,1", "0,1,2"] {
        let sink = Sink::bind();
        let engine = start(cores, &sink, &["--count", "3"]);
        let groups: Vec<Vec<Ev>> = [["GE", "IBM"], ["AAPL", "T"]]
            .iter()
            .map(|syms| {
                (0..20u64)
                    .map(|i| {
                        (
                            syms[(i % 2) as usize],
                            T0 + i * 10,
                            100.0 + i as f64,
                            10.0 + (i % 3) as f64,
                        )
                    })
                    .collect()
            })
            .collect();
        send_over(&engine, &groups);
        let (status, stderr) = engine.stop();
        assert!(status.success(), "{stderr}");
        let mut want = Vec::new();
        for g in &groups {
            let mut by_sym: BTreeMap<&str, Vec<&Ev>> = BTreeMap::new();
            for e in g {
                by_sym.entry(e.0).or_default().push(e);
            }
            for (sym, evs) in by_sym {
                for chunk in evs.chunks(3) {
                    let qty: f64 = chunk.iter().map(|e| e.2).sum();
                    let notional: f64 = chunk.iter().map(|e| e.2 * e.3).sum();
                    want.push(format!(
                        "{sym},{},{},{},{qty},{:.6}",
                        chunk[0].1,
                        chunk[chunk.len() - 1].1,
                        chunk.len(),
                        notional / qty
                    ));
                }
            }
        }
        want.sort();
        assert_eq!(sorted_lines(&sink.finish().concat()), want, "{cores}");
    }
}

/// Input goes quiet with the last window still open: it fires anyway, while the engine runs,
/// within range + delay of wall-clock time (plus the 50 ms check).
#[test]
fn quiet_input_fires_the_last_window() {
    for cores in ["0", "0,1", "0,1,2"] {
        let sink = Sink::bind();
        let engine = start(cores, &sink, &["--window", "500ms"]);
        let events: Vec<Ev> = (0..10u64)
            .map(|i| ("GE", T0 + i * 70, 100.0, 10.0))
            .collect();
        let want = model(&events, 500, 500);
        let addr = engine.addr("Orders");
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(&frames(&events)).unwrap();
        let sent = Instant::now();
        // The connection stays open and silent: only the quiet-input rule can fire the last.
        wait_for_line(&sink, want.last().unwrap());
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{:?}",
            sent.elapsed()
        );
        drop(conn);
        let (status, stderr) = engine.stop();
        assert!(status.success(), "{stderr}");
        assert_eq!(sorted_lines(&sink.finish().concat()), want, "{cores}");
    }
}

/// A malformed order or a bad transact time is a decode error; the rest go on.
#[test]
fn bad_transact_time_is_a_decode_error() {
    let sink = Sink::bind();
    let engine = start("0", &sink, &[]);
    let mut bytes = frames(&[("GE", T0, 100.0, 10.0)]);
    let bad = Order::new(1, 7, *b"000001", pad_symbol("GE"), 1.0, 1.0, transact(T0));
    let mut enc = Vec::new();
    bad.encode_framed(&mut enc);
    // Overwrite the month with "13".
    let at = enc.len() - 21 + 4;
    enc[at..at + 2].copy_from_slice(b"13");
    bytes.extend_from_slice(&enc);
    bytes.extend_from_slice(&frames(&[("GE", T0 + 10, 100.0, 20.0)]));
    common::send(engine.addr("Orders"), &bytes);
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(common::summary_count(&stderr, "decode"), 1, "{stderr}");
    assert_eq!(
        sorted_lines(&sink.finish().concat()),
        [format!("GE,{T0},{},2,200,15.000000", T0 + 1000)]
    );
}
