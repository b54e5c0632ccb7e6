//! End-to-end tests of `bettong word-count` over real sockets, with 1 and 2 shards.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;

use common::{frame, send, summary_count, Engine, Sink};

/// The split rules, written independently of the engine's: lowercase each line, strip space
/// and ASCII punctuation at both ends, split on single spaces, strip each piece, skip empties.
fn reference_words(text: &str) -> Vec<String> {
    let strip = |c: char| c == ' ' || (c.is_ascii_punctuation());
    let mut out = Vec::new();
    for line in text.split('\n') {
        let lower: String = line.chars().flat_map(char::to_lowercase).collect();
        let trimmed = lower.trim_matches(strip);
        for piece in trimmed.split(' ') {
            let w = piece.trim_matches(strip);
            if !w.is_empty() {
                out.push(w.to_string());
            }
        }
    }
    out
}

fn reference_counts(messages: &[String]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for m in messages {
        for w in reference_words(m) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

/// Deterministic text with mixed case, punctuation, double spaces and several lines.
fn generated_messages(conn: u64, n: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "Congress",
        "shall",
        "make",
        "no",
        "law",
        "respecting",
        "an",
        "establishment",
        "of",
        "religion",
        "don't",
        "THE",
        "people",
        "right",
        "Arms",
        "état",
        "free",
    ];
    const PUNCT: &[&str] = &["", "", ",", ".", "!", "\"", "(", ")", ";", "--", "'"];
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ conn;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let mut s = String::new();
            for i in 0..(1 + next() % 12) {
                if i > 0 {
                    s.push_str(match next() % 10 {
                        0 => "  ",
                        1 => "\n",
                        2 => " - ",
                        _ => " ",
                    });
                }
                s.push_str(PUNCT[(next() % PUNCT.len() as u64) as usize]);
                s.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
                s.push_str(PUNCT[(next() % PUNCT.len() as u64) as usize]);
            }
            s
        })
        .collect()
}

/// Parses `word => count` lines and checks, per connection, that each word's counts rise.
/// Returns every count seen per word.
fn parse_output(conns: &[Vec<u8>]) -> HashMap<String, Vec<u64>> {
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for bytes in conns {
        let text = std::str::from_utf8(bytes).expect("output is UTF-8");
        assert!(text.is_empty() || text.ends_with('\n'), "torn last line");
        let mut last: HashMap<&str, u64> = HashMap::new();
        for line in text.lines() {
            let (word, count) = line
                .split_once(" => ")
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            let count: u64 = count.parse().unwrap();
            let prev = last.insert(word, count).unwrap_or(0);
            assert!(
                count > prev,
                "{word}: count {count} after {prev} on one connection"
            );
            seen.entry(word.to_string()).or_default().push(count);
        }
    }
    seen
}

/// Every word's lines carry the counts 1..=n exactly once, and n is the reference count.
fn assert_exact(seen: &HashMap<String, Vec<u64>>, expected: &BTreeMap<String, u64>) {
    assert_eq!(seen.len(), expected.len(), "distinct words");
    for (word, &n) in expected {
        let mut counts = seen
            .get(word)
            .unwrap_or_else(|| panic!("no output for {word:?}"))
            .clone();
        counts.sort_unstable();
        assert_eq!(counts, (1..=n).collect::<Vec<_>>(), "counts of {word:?}");
    }
}

fn engine(cores: &str, sink: &Sink, extra: &[&str]) -> Engine {
    let out = sink.addr.to_string();
    let mut args = vec![
        "word-count",
        "--in",
        "127.0.0.1:0",
        "--out",
        &out,
        "--cores",
        cores,
        "--no-pin",
    ];
    args.extend_from_slice(extra);
    Engine::start(&args)
}

fn exact_counts_over_concurrent_connections(cores: &str) {
    let sink = Sink::bind();
    let engine = engine(cores, &sink, &[]);
    let addr = engine.addr("Text");
    let per_conn: Vec<Vec<String>> = (0..6).map(|c| generated_messages(c, 400)).collect();
    std::thread::scope(|s| {
        for msgs in &per_conn {
            s.spawn(move || {
                let bytes: Vec<u8> = msgs.iter().flat_map(|m| frame(m.as_bytes())).collect();
                send(addr, &bytes);
            });
        }
    });
    let (status, stderr) = engine.stop();
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    let all: Vec<String> = per_conn.concat();
    let expected = reference_counts(&all);
    let seen = parse_output(&sink.finish());
    assert_exact(&seen, &expected);
    assert_eq!(summary_count(&stderr, "messages in"), all.len() as u64);
    assert_eq!(
        summary_count(&stderr, "out"),
        expected.values().sum::<u64>()
    );
    assert_eq!(summary_count(&stderr, "connections"), 6);
    assert!(stderr.contains("start-to-end latency: p50"), "{stderr}");
}

#[test]
fn exact_counts_on_one_shard() {
    exact_counts_over_concurrent_connections("0");
}

#[test]
fn exact_counts_on_two_shards() {
    exact_counts_over_concurrent_connections("0,1");
}

/// Wallaroo's own word-count text, one line per message, gives Wallaroo's final counts.
#[test]
fn wallaroo_bill_of_rights_counts() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/wallaroo/word_count/"
    );
    let text = std::fs::read_to_string(format!("{dir}count_this.txt")).unwrap();
    let expected: BTreeMap<String, u64> = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}expected_final_counts.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(expected.len(), 217);
    assert_eq!(expected.values().sum::<u64>(), 482);

    let sink = Sink::bind();
    let engine = engine("0,1", &sink, &[]);
    let bytes: Vec<u8> = text.lines().flat_map(|l| frame(l.as_bytes())).collect();
    send(engine.addr("Text"), &bytes);
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    let seen = parse_output(&sink.finish());
    let finals: BTreeMap<String, u64> = seen
        .iter()
        .map(|(w, c)| (w.clone(), *c.iter().max().unwrap()))
        .collect();
    assert_eq!(finals, expected);
    assert_eq!(seen.values().map(Vec::len).sum::<usize>(), 482);
}

/// A frame over --max-frame closes its connection with an error; other connections and the
/// frames before it are fully counted.
#[test]
fn oversized_frame_closes_only_its_connection() {
    let sink = Sink::bind();
    let engine = engine("0,1", &sink, &["--max-frame", "64"]);
    let addr = engine.addr("Text");
    let mut bad = frame(b"alpha beta");
    bad.extend_from_slice(&1000u32.to_be_bytes());
    bad.extend_from_slice(&[b'x'; 100]);
    send(addr, &bad);
    let good: Vec<String> = (0..200).map(|i| format!("gamma delta {}", i % 7)).collect();
    send(
        addr,
        &good
            .iter()
            .flat_map(|m| frame(m.as_bytes()))
            .collect::<Vec<_>>(),
    );
    engine.wait_for_stderr("over the limit of 64");
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(summary_count(&stderr, "oversized frame"), 1);
    let mut all = vec!["alpha beta".to_string()];
    all.extend(good);
    assert_exact(&parse_output(&sink.finish()), &reference_counts(&all));
}

/// A payload that is not UTF-8 is a decode error: logged, counted, skipped; the connection
/// goes on with its next frame.
#[test]
fn invalid_utf8_is_reported_and_skipped() {
    let sink = Sink::bind();
    let engine = engine("0,1", &sink, &[]);
    let mut bytes = frame(b"before the error");
    bytes.extend(frame(&[0x66, 0xff, 0xfe, 0x67]));
    bytes.extend(frame(b"after the error"));
    send(engine.addr("Text"), &bytes);
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("not UTF-8"), "{stderr}");
    assert_eq!(summary_count(&stderr, "decode"), 1);
    assert_eq!(summary_count(&stderr, "messages in"), 3);
    let expected = reference_counts(&["before the error".into(), "after the error".into()]);
    assert_exact(&parse_output(&sink.finish()), &expected);
}

/// A client that disconnects in the middle of a frame: its whole frames count, the torn one
/// is reported, other connections are untouched.
#[test]
fn connection_cut_mid_frame() {
    let sink = Sink::bind();
    let engine = engine("0", &sink, &[]);
    let addr = engine.addr("Text");
    let mut bytes = frame(b"one two");
    bytes.extend_from_slice(&20u32.to_be_bytes());
    bytes.extend_from_slice(b"three fo");
    send(addr, &bytes);
    send(addr, &frame(b"five six"));
    engine.wait_for_stderr("closed in the middle of a frame");
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(summary_count(&stderr, "cut mid-frame"), 1);
    let expected = reference_counts(&["one two".into(), "five six".into()]);
    assert_exact(&parse_output(&sink.finish()), &expected);
}

/// The sink is not listening when output is ready: the engine retries until it is, and
/// delivers everything.
#[test]
fn sink_that_starts_late_gets_everything() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = port.to_string();
    let engine = Engine::start(&[
        "word-count",
        "--in",
        "127.0.0.1:0",
        "--out",
        &out,
        "--cores",
        "0,1",
        "--no-pin",
    ]);
    let msgs: Vec<String> = (0..100).map(|i| format!("late sink {}", i % 5)).collect();
    send(
        engine.addr("Text"),
        &msgs
            .iter()
            .flat_map(|m| frame(m.as_bytes()))
            .collect::<Vec<_>>(),
    );
    engine.wait_for_stderr("not listening yet");
    let sink = Sink::on(TcpListener::bind(port).unwrap(), 0);
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    assert_exact(&parse_output(&sink.finish()), &reference_counts(&msgs));
}

/// Tiny rings and sink buffers with a slow sink: sources are paused, nothing is dropped.
#[test]
fn backpressure_loses_nothing() {
    let sink = Sink::on(TcpListener::bind("127.0.0.1:0").unwrap(), 200);
    let engine = engine(
        "0,1",
        &sink,
        &["--ring-capacity", "2", "--sink-buffer", "256"],
    );
    let addr = engine.addr("Text");
    let per_conn: Vec<Vec<String>> = (10..14).map(|c| generated_messages(c, 1500)).collect();
    std::thread::scope(|s| {
        for msgs in &per_conn {
            s.spawn(move || {
                send(
                    addr,
                    &msgs
                        .iter()
                        .flat_map(|m| frame(m.as_bytes()))
                        .collect::<Vec<_>>(),
                )
            });
        }
    });
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        summary_count(&stderr, "backpressure pauses") > 0,
        "{stderr}"
    );
    let all = per_conn.concat();
    assert_exact(&parse_output(&sink.finish()), &reference_counts(&all));
}

/// Live metrics: a line per interval on stderr, and JSON lines with power-of-two latency bins
/// and per-computation times.
#[test]
fn live_metrics_lines_and_json() {
    let json = std::env::temp_dir().join(format!("bettong-metrics-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let path = json.to_string_lossy().to_string();
    let sink = Sink::bind();
    let engine = engine(
        "0,1",
        &sink,
        &["--metrics-interval", "100ms", "--metrics-json", &path],
    );
    let msgs: Vec<String> = (0..3000)
        .map(|i| format!("metric words {}", i % 11))
        .collect();
    send(
        engine.addr("Text"),
        &msgs
            .iter()
            .flat_map(|m| frame(m.as_bytes()))
            .collect::<Vec<_>>(),
    );
    // No wait: the stop reports the last, partial period too.
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    let lines = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    let records: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!records.is_empty());
    let total_in: u64 = records
        .iter()
        .map(|r| r["messages_in"].as_u64().unwrap())
        .sum();
    assert_eq!(
        total_in, 3000,
        "every message counted in exactly one period"
    );
    let busy = records
        .iter()
        .find(|r| r["messages_in"].as_u64().unwrap() > 0)
        .unwrap();
    let bins = busy["latency_pow2_bins"].as_object().unwrap();
    let binned: u64 = bins.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(binned, busy["latency_ns"]["samples"].as_u64().unwrap());
    let comps = busy["computations"].as_object().unwrap();
    assert!(
        comps.contains_key("split") && comps.contains_key("count words"),
        "{comps:?}"
    );
}
