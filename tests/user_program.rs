//! A user's own program, written as the README shows (`bettong::run_until_signal`), stopped by
//! SIGTERM: it prints its summary, exits 0 and loses nothing that was sent before the signal.
//!
//! The program is this test binary itself (no libtest harness: `harness = false`), started
//! again with `BETTONG_USER_PROGRAM` set; the parent plays the clients and the sink.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bettong::{Application, DecodeError, EngineConfig, Pipeline, TcpSink, TcpSource};

mod common;

const CHILD: &str = "BETTONG_USER_PROGRAM";

/// The user's program: a running count per key, from a TCP source to a TCP sink.
fn user_program(sink: SocketAddr, shards: usize) -> ! {
    let decode = |b: &[u8]| -> Result<String, DecodeError> {
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::new("not UTF-8"))
    };
    let app = Application::new(
        "counts",
        Pipeline::source("Keys", TcpSource::new(decode))
            .key_by(|k: &String| k.as_str())
            .to_state(|k: String, n: &mut u64| {
                *n += 1;
                Some(format!("{k} {n}\n"))
            })
            .name("count")
            .to_sink(
                "Counts",
                TcpSink::new(|line: &String, out: &mut Vec<u8>| {
                    out.extend_from_slice(line.as_bytes())
                }),
            ),
    );
    let config = EngineConfig {
        cores: (0..shards).collect(),
        pin: false,
        inputs: vec![(None, "127.0.0.1:0".parse().unwrap())],
        outputs: vec![(None, sink.into())],
        ..EngineConfig::default()
    };
    let result = bettong::run_until_signal(app, config, |engine| {
        println!("ready {}", engine.sources()[0].1);
        let _ = std::io::stdout().flush();
    });
    match result {
        Ok(summary) => {
            eprintln!("{summary}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    }
}

fn check(shards: usize) {
    let sink = common::Sink::bind();
    let sink_addr = sink.addr;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, format!("{sink_addr} {shards}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("expected the ready line, got {line:?}"))
        .trim()
        .parse()
        .unwrap();
    // Three clients, 1000 frames in all over 10 keys; the signal comes right after the last.
    for c in 0..3 {
        let mut conn = TcpStream::connect(addr).unwrap();
        let mut bytes = Vec::new();
        for i in (c..1000).step_by(3) {
            bettong::codec::write_frame(&mut bytes, format!("k{}", i % 10).as_bytes());
        }
        conn.write_all(&bytes).unwrap();
    }
    // SAFETY: kill only sends a signal to the child we started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let started = Instant::now();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{shards} shards: the stop took {:?}",
        started.elapsed()
    );
    assert!(status.success(), "{shards} shards: {status}\n{stderr}");
    assert!(
        stderr.contains("messages in 1000, out 1000"),
        "{shards} shards: the summary is printed:\n{stderr}"
    );
    let output = String::from_utf8(sink.finish().concat()).unwrap();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut lines = 0;
    for l in output.lines() {
        let (k, n) = l.split_once(' ').unwrap();
        let n: u64 = n.parse().unwrap();
        let prev = last.insert(k.to_string(), n).unwrap_or(0);
        assert!(
            n > prev,
            "{shards} shards: counts of {k} grow: {prev} then {n}"
        );
        lines += 1;
    }
    assert_eq!(lines, 1000, "{shards} shards: one output per message");
    assert_eq!(last.len(), 10);
    assert!(last.values().all(|n| *n == 100), "{last:?}");
}

fn main() {
    if let Ok(args) = std::env::var(CHILD) {
        let (sink, shards) = args.split_once(' ').unwrap();
        user_program(sink.parse().unwrap(), shards.parse().unwrap());
    }
    for shards in [1, 2, 3, 4] {
        check(shards);
        println!("user program stopped by SIGTERM on {shards} shard(s): ok");
    }
}
