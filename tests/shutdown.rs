//! Stopping `bettong word-count` with real signals: with three and four shards, within
//! `--drain-timeout` whatever the clients and the sink do, and without losing outputs when the
//! sink connection drops and comes back.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{frame, send, summary_count, Engine, Sink};

/// `word => count` lines: every count seen per word (duplicates kept).
fn counts_seen(conns: &[Vec<u8>]) -> HashMap<String, Vec<u64>> {
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for bytes in conns {
        let text = std::str::from_utf8(bytes).expect("output is UTF-8");
        assert!(text.is_empty() || text.ends_with('\n'), "torn last line");
        for line in text.lines() {
            let (word, count) = line
                .split_once(" => ")
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            seen.entry(word.to_string())
                .or_default()
                .push(count.parse().unwrap());
        }
    }
    seen
}

/// Nothing lost: every word's counts 1..=n each appear at least once (duplicates allowed),
/// nothing beyond n. Returns how many lines were duplicates.
fn assert_none_lost(seen: &HashMap<String, Vec<u64>>, expected: &HashMap<String, u64>) -> u64 {
    assert_eq!(seen.len(), expected.len(), "distinct words");
    let mut duplicates = 0;
    for (word, &n) in expected {
        let mut counts = seen
            .get(word)
            .unwrap_or_else(|| panic!("no output for {word:?}"))
            .clone();
        let lines = counts.len() as u64;
        counts.sort_unstable();
        counts.dedup();
        assert_eq!(counts, (1..=n).collect::<Vec<_>>(), "counts of {word:?}");
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
fn stops_after_traffic(cores: &str, rounds: usize) {
    for round in 0..rounds {
        let sink = Sink::bind();
        let engine = start(cores, sink.addr, &[]);
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
fn stops_when_idle(cores: &str, rounds: usize) {
    for round in 0..rounds {
        let sink = Sink::bind();
        let engine = start(cores, sink.addr, &[]);
        let (status, _, stderr) = engine.terminate_within(Duration::from_secs(10));
        assert!(
            status.success(),
            "round {round}: exit {status}; stderr:\n{stderr}"
        );
    }
}

#[test]
fn sigterm_stops_three_unpinned_shards() {
    stops_after_traffic("0-2", 5);
    stops_when_idle("0-2", 5);
}

#[test]
fn sigterm_stops_four_unpinned_shards() {
    stops_after_traffic("0-3", 5);
    stops_when_idle("0-3", 5);
}
