//! Observability: the `--metrics-addr` endpoint scraped over plain HTTP and read with a
//! Prometheus text-format parser, a real Prometheus server scraping the engine (when the
//! `prometheus` binary is installed), and the periodic log line and JSON lines.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{frame, wait_until, Engine, Sink};
use prometheus_parse::{Scrape, Value};

/// `GET path` over HTTP/1.0 (no chunked answers): the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the HTTP endpoint");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// Scrapes `/metrics` and parses it with `prometheus-parse`.
fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("valid exposition format")
}

/// The sum of a counter or gauge over every series of `name` whose labels include `with`.
fn total(scrape: &Scrape, name: &str, with: &[(&str, &str)]) -> f64 {
    let mut found = false;
    let mut sum = 0.0;
    for s in scrape.samples.iter().filter(|s| s.metric == name) {
        if with.iter().any(|(k, v)| s.labels.get(k) != Some(*v)) {
            continue;
        }
        found = true;
        sum += match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a plain value: {other:?}"),
        };
    }
    assert!(found, "no series {name} with {with:?}");
    sum
}

/// Per series of histogram `name` (keyed by its labels other than `le`): its buckets (upper
/// bound, cumulative count), checked to be powers of two with counts that never go down.
type Series = (HashMap<String, String>, Vec<(f64, f64)>);

fn histograms(scrape: &Scrape, name: &str) -> Vec<Series> {
    let mut out = Vec::new();
    for s in scrape.samples.iter().filter(|s| s.metric == name) {
        let Value::Histogram(buckets) = &s.value else {
            panic!("{name} is not a histogram: {:?}", s.value);
        };
        let mut last = 0.0;
        let mut bounds = Vec::new();
        for b in buckets {
            assert!(b.count >= last, "{name}: buckets must be cumulative");
            last = b.count;
            if b.less_than.is_finite() {
                let k = b.less_than.log2();
                assert_eq!(k, k.round(), "{name}: le={} is not 2^k ns", b.less_than);
            }
            bounds.push((b.less_than, b.count));
        }
        let labels: HashMap<String, String> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.push((labels, bounds));
    }
    assert!(!out.is_empty(), "no histogram {name}");
    out
}

/// The count of a histogram series: its `+Inf` bucket.
fn histogram_count(buckets: &[(f64, f64)]) -> f64 {
    buckets
        .iter()
        .find(|(le, _)| le.is_infinite())
        .map_or_else(|| buckets.last().map_or(0.0, |b| b.1), |b| b.1)
}

/// `bettong passthrough` into `sink` on unpinned `cores`, with the metrics endpoint on a free
/// port (its address is the engine's `metrics` entry).
fn passthrough_with_metrics(sink: &Sink, cores: &str) -> Engine {
    let out = sink.addr.to_string();
    Engine::start(&[
        "passthrough",
        "--in",
        "127.0.0.1:0",
        "--out",
        &out,
        "--cores",
        cores,
        "--no-pin",
        "--metrics-interval",
        "0",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
}

/// Passthrough on two shards: what the endpoint counts is exactly what was sent, the latency
/// histograms count every finished message in power-of-two buckets, and /health answers.
#[test]
fn metrics_endpoint_counts_what_was_sent() {
    let sink = Sink::bind();
    let engine = passthrough_with_metrics(&sink, "0,1");
    let metrics = engine.addr("metrics");
    let input = engine.addr("Frames");
    assert_eq!(http_get(metrics, "/health").0, 200);
    assert_eq!(http_get(metrics, "/nothing-here").0, 404);

    // Four connections, so that (with SO_REUSEPORT) both shards are likely to get some.
    const CONNS: usize = 4;
    const PER_CONN: usize = 500;
    let senders: Vec<_> = (0..CONNS)
        .map(|c| {
            std::thread::spawn(move || {
                let bytes: Vec<u8> = (0..PER_CONN)
                    .flat_map(|i| frame(format!("conn {c} message {i}").as_bytes()))
                    .collect();
                common::send(input, &bytes);
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let sent = (CONNS * PER_CONN) as f64;
    wait_until("the endpoint to count every message finished", || {
        total(
            &scrape(metrics),
            "bettong_messages_finished_total",
            &[("app", "passthrough")],
        ) >= sent
    });
    // Connections closed by the senders are counted closed once their reader ends.
    wait_until("every source connection to close", || {
        total(&scrape(metrics), "bettong_connections_open", &[]) == 0.0
    });
    let s = scrape(metrics);
    let frames = [("app", "passthrough"), ("source", "Frames")];
    assert_eq!(total(&s, "bettong_messages_in_total", &frames), sent);
    assert_eq!(total(&s, "bettong_messages_out_total", &[]), sent);
    assert_eq!(total(&s, "bettong_messages_filtered_total", &[]), 0.0);
    assert_eq!(
        total(&s, "bettong_sink_messages_total", &[("sink", "Out")]),
        sent
    );
    assert_eq!(
        total(&s, "bettong_connections_accepted_total", &frames),
        CONNS as f64
    );
    assert_eq!(total(&s, "bettong_decode_errors_total", &frames), 0.0);
    assert_eq!(total(&s, "bettong_frame_errors_total", &frames), 0.0);
    // Every shard has its series.
    for shard in ["0", "1"] {
        total(&s, "bettong_messages_in_total", &[("shard", shard)]);
    }
    let latency = histograms(&s, "bettong_start_to_end_latency_nanoseconds");
    assert_eq!(latency.len(), 2, "one start-to-end histogram per shard");
    let counted: f64 = latency.iter().map(|(_, b)| histogram_count(b)).sum();
    assert_eq!(counted, sent, "the histograms count every message finished");
    // The `_count` series agrees with the buckets.
    assert_eq!(
        total(&s, "bettong_start_to_end_latency_nanoseconds_count", &[]),
        sent
    );
    assert!(total(&s, "bettong_start_to_end_latency_nanoseconds_sum", &[]) > 0.0);

    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(common::summary_count(&stderr, "messages in"), sent as u64);
    assert_eq!(sink.finish().concat().len(), {
        let one: usize = (0..CONNS)
            .flat_map(|c| (0..PER_CONN).map(move |i| 4 + format!("conn {c} message {i}").len()))
            .sum();
        one
    });
}

/// A source's connections are spread evenly over the shards, whichever listener the kernel
/// gave them to (SO_REUSEPORT hashes, so 2 connections per shard used to land 3/1/…), and a
/// connection handed to another shard loses nothing: 3 and 4 unpinned shards, 2 connections
/// per shard held open at once, then a burst of 200 short connections, then each held one
/// sends its messages and closes; every message reaches the sink exactly once.
#[test]
fn connections_are_spread_evenly_over_shards_and_lose_nothing() {
    for shards in [3usize, 4] {
        let sink = Sink::bind();
        let engine = passthrough_with_metrics(&sink, &format!("0-{}", shards - 1));
        let metrics = engine.addr("metrics");
        let input = engine.addr("Frames");
        let conns = 2 * shards;
        // Open every connection and have each deliver one frame, so that all are being served
        // (on whichever shard) before the counts are read.
        let mut streams = Vec::new();
        for c in 0..conns {
            let mut s = TcpStream::connect(input).unwrap();
            s.write_all(&frame(format!("conn {c} hello").as_bytes()))
                .unwrap();
            streams.push(s);
            wait_until("the new connection's first message", || {
                total(&scrape(metrics), "bettong_messages_in_total", &[]) == (c + 1) as f64
            });
        }
        let s = scrape(metrics);
        let per_shard: Vec<f64> = (0..shards)
            .map(|k| {
                total(
                    &s,
                    "bettong_connections_open",
                    &[("source", "Frames"), ("shard", &k.to_string())],
                )
            })
            .collect();
        assert_eq!(per_shard, vec![2.0; shards], "open connections per shard");
        const PER_CONN: usize = 2000;
        let mut expected = Vec::new();
        // A burst of short connections on top, opened as fast as the client can: hand-overs
        // while the accept loops are busy (an earlier version lost 2 of 500 this way).
        for b in 0..200 {
            let m = format!("burst {b}");
            TcpStream::connect(input)
                .unwrap()
                .write_all(&frame(m.as_bytes()))
                .unwrap();
            expected.push(m);
        }
        for (c, mut s) in streams.into_iter().enumerate() {
            expected.push(format!("conn {c} hello"));
            let bytes: Vec<u8> = (0..PER_CONN)
                .flat_map(|i| {
                    let m = format!("conn {c} message {i}");
                    expected.push(m.clone());
                    frame(m.as_bytes())
                })
                .collect();
            s.write_all(&bytes).unwrap();
        }
        let expected_bytes: usize = expected.iter().map(|m| 4 + m.len()).sum();
        wait_until("every message at the sink", || {
            sink.bytes() >= expected_bytes
        });
        let (status, stderr) = engine.stop();
        assert!(status.success(), "{stderr}");
        let mut got: Vec<String> = sink
            .finish()
            .iter()
            .flat_map(|b| common::payloads(b))
            .map(|p| String::from_utf8(p).unwrap())
            .collect();
        got.sort();
        expected.sort();
        assert_eq!(
            got.len(),
            expected.len(),
            "{shards} shards: lost or repeated"
        );
        assert_eq!(got, expected, "{shards} shards");
    }
}

/// Word count: decode errors are counted for their source, and every named computation has
/// a per-operator latency histogram.
#[test]
fn metrics_endpoint_names_sources_and_operators() {
    let sink = Sink::bind();
    let out = sink.addr.to_string();
    let engine = Engine::start(&[
        "word-count",
        "--in",
        "127.0.0.1:0",
        "--out",
        &out,
        "--cores",
        "0,1",
        "--no-pin",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let metrics = engine.addr("metrics");
    let mut bytes: Vec<u8> = (0..2000)
        .flat_map(|i| frame(format!("alpha beta gamma {}", i % 7).as_bytes()))
        .collect();
    bytes.extend(frame(&[0xff, 0xfe, 0x00]));
    common::send(engine.addr("Text"), &bytes);
    wait_until("the endpoint to count every line", || {
        total(
            &scrape(metrics),
            "bettong_messages_in_total",
            &[("source", "Text")],
        ) >= 2001.0
    });
    wait_until("every line to finish", || {
        let s = scrape(metrics);
        total(&s, "bettong_messages_finished_total", &[])
            >= total(&s, "bettong_messages_out_total", &[])
            && total(&s, "bettong_decode_errors_total", &[("source", "Text")]) == 1.0
    });
    let s = scrape(metrics);
    assert_eq!(
        total(
            &s,
            "bettong_decode_errors_total",
            &[("app", "word count"), ("source", "Text")]
        ),
        1.0
    );
    let ops = histograms(&s, "bettong_operator_latency_nanoseconds");
    let names: Vec<&str> = ops.iter().map(|(l, _)| l["operator"].as_str()).collect();
    assert!(
        names.contains(&"split") && names.contains(&"count words"),
        "{names:?}"
    );
    // A computation is timed on the first message a shard gives it, then on one in 256.
    for name in ["split", "count words"] {
        let timed: f64 = ops
            .iter()
            .filter(|(l, _)| l["operator"] == name)
            .map(|(_, b)| histogram_count(b))
            .sum();
        assert!(timed >= 1.0, "{name} never timed");
    }
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
}

/// The periodic line says nothing while nothing moves; JSON lines carry the wall-clock time
/// and the application's name.
#[test]
fn idle_engine_logs_no_metrics_lines_and_json_has_time_and_app() {
    let json = std::env::temp_dir().join(format!("bettong-obs-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let path = json.to_string_lossy().to_string();
    let sink = Sink::bind();
    let out = sink.addr.to_string();
    let engine = Engine::start(&[
        "word-count",
        "--in",
        "127.0.0.1:0",
        "--out",
        &out,
        "--cores",
        "0,1",
        "--no-pin",
        "--metrics-interval",
        "50ms",
        "--metrics-json",
        &path,
    ]);
    // Several idle periods.
    std::thread::sleep(Duration::from_millis(500));
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    common::send(engine.addr("Text"), &frame(b"one two three"));
    engine.wait_for_stderr("metrics t=");
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("metrics t="))
        .collect();
    assert!(
        !lines.is_empty() && lines.len() <= 3,
        "only periods in which something moved are logged: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains(" in 0/s out 0/s")),
        "{lines:?}"
    );
    let text = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        records.len() >= 5,
        "JSON lines are written for idle periods too"
    );
    for r in &records {
        assert_eq!(r["app"], "word count");
        let t = r["time"].as_u64().expect("unix ms");
        assert!(t > 1_600_000_000_000, "{t}");
    }
    let busy = records
        .iter()
        .find(|r| r["messages_in"].as_u64() == Some(1))
        .expect("the period with the message");
    assert!(busy["time"].as_u64().unwrap() >= before_ms);
}

/// A real Prometheus server scrapes the engine: its target is up, and
/// `sum(bettong_messages_in_total)` equals what was sent. Skipped (and said so) when the
/// `prometheus` binary is not installed (`.ci/run` installs Debian's package).
#[test]
fn prometheus_server_scrapes_the_engine() {
    let Some(prometheus) = find_prometheus() else {
        println!("SKIPPED prometheus_server_scrapes_the_engine: no `prometheus` binary (apt-get install prometheus)");
        return;
    };
    let sink = Sink::bind();
    let out = sink.addr.to_string();
    let engine = Engine::start(&[
        "passthrough",
        "--in",
        "127.0.0.1:0",
        "--out",
        &out,
        "--cores",
        "0,1",
        "--no-pin",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let metrics = engine.addr("metrics");
    const SENT: usize = 1234;
    let bytes: Vec<u8> = (0..SENT)
        .flat_map(|i| frame(format!("m{i}").as_bytes()))
        .collect();
    common::send(engine.addr("Frames"), &bytes);

    let dir = std::env::temp_dir().join(format!("bettong-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: bettong\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let web = free_port();
    let server = Server(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus"),
    );
    let log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(60);
    let api = |path: &str| -> Option<serde_json::Value> {
        let s = TcpStream::connect(web).ok()?;
        drop(s);
        let (status, body) = http_get(web, path);
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    };
    // The target is up.
    loop {
        assert!(
            Instant::now() < deadline,
            "the bettong target never came up; prometheus log:\n{}",
            log()
        );
        if let Some(t) = api("/api/v1/targets") {
            let up = t["data"]["activeTargets"].as_array().is_some_and(|a| {
                a.iter().any(|t| {
                    t["health"] == "up"
                        && t["scrapeUrl"]
                            .as_str()
                            .is_some_and(|u| u.contains(&metrics.to_string()))
                })
            });
            if up {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // PromQL sees what was sent.
    let query = "/api/v1/query?query=sum(bettong_messages_in_total)";
    let mut last = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "sum(bettong_messages_in_total) never reached {SENT} (last answer {last:?}); prometheus log:\n{}",
            log()
        );
        if let Some(r) = api(query) {
            let value = r["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok());
            if value == Some(SENT as f64) {
                break;
            }
            last = Some(r);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // The latency histogram's buckets are usable by histogram_quantile.
    let p99 = api("/api/v1/query?query=histogram_quantile(0.99,sum%20by%20(le)(bettong_start_to_end_latency_nanoseconds_bucket))")
        .expect("quantile query");
    let p99 = p99["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .expect("a p99 value");
    assert!(p99 > 0.0 && p99 < 60e9, "p99 {p99} ns");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
}

/// Kills the server when the test ends, passed or not.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_prometheus() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
