//! Replays: a file of frames as a source (`--in NAME@file:PATH`) and files as sinks
//! (`--out file:PATH`, one file per shard). The engine stops by itself once every source has
//! read its file to the end, with the same outputs as over TCP.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bettong-replay-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `bettong ARGS` to its own end (no signal) within a minute; returns stderr.
fn run_to_end(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bettong"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert!(status.success(), "bettong {args:?}: {status}\n{err}");
            return err;
        }
        assert!(
            Instant::now() < until,
            "bettong {args:?} did not stop by itself"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The per-shard output files of `--out file:PATH` on `shards` shards, concatenated.
fn outputs(path: &std::path::Path, shards: usize) -> String {
    if shards == 1 {
        return std::fs::read_to_string(path).unwrap();
    }
    (0..shards)
        .map(|s| std::fs::read_to_string(format!("{}.{s}", path.display())).unwrap())
        .collect()
}

#[test]
fn word_count_replays_a_file_into_files() {
    let dir = temp("wc");
    let input = dir.join("text.frames");
    let lines: Vec<String> = (0..2_000)
        .map(|i| format!("the {} quick fox {} jumps", i % 13, i % 5))
        .collect();
    let mut bytes = Vec::new();
    for l in &lines {
        bettong::codec::write_frame(&mut bytes, l.as_bytes());
    }
    std::fs::write(&input, &bytes).unwrap();
    let mut model: HashMap<String, u64> = HashMap::new();
    for l in &lines {
        for w in bettong_apps::word_count::split(l) {
            *model.entry(w).or_default() += 1;
        }
    }
    for shards in [1usize, 2, 3] {
        let out = dir.join(format!("counts-{shards}.txt"));
        let cores = (0..shards)
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let stderr = run_to_end(&[
            "word-count",
            "--in",
            &format!("Text@file:{}", input.display()),
            "--out",
            &format!("file:{}", out.display()),
            "--cores",
            &cores,
            "--no-pin",
            "--metrics-interval",
            "0",
        ]);
        assert!(stderr.contains("messages in 2000"), "{stderr}");
        // Every word's counts 1..n, each exactly once.
        let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
        for line in outputs(&out, shards).lines() {
            let (w, n) = line.split_once(" => ").unwrap();
            seen.entry(w.to_string())
                .or_default()
                .push(n.parse().unwrap());
        }
        assert_eq!(seen.len(), model.len(), "{shards} shard(s)");
        for (w, mut counts) in seen {
            counts.sort_unstable();
            let n = model[&w];
            assert_eq!(
                counts,
                (1..=n).collect::<Vec<_>>(),
                "{w} on {shards} shard(s)"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vwap_back_test_from_a_capture() {
    let dir = temp("vwap");
    let mut g = bettong_giles::gen_vwap::GenVwapArgs::new(&dir);
    g.orders = 50_000;
    g.symbols = 20;
    let data = bettong_giles::gen_vwap::generate(&g).unwrap();
    // The model: one line per symbol and 1 s window with orders.
    let bytes = std::fs::read(&data.path).unwrap();
    let mut windows = std::collections::HashSet::new();
    for frame in bytes.chunks(57) {
        let o = bettong_apps::vwap::decode(&frame[4..]).unwrap();
        windows.insert((*o.order().symbol(), o.event_ns() / 1_000_000_000));
    }
    for shards in [1usize, 2] {
        let out = dir.join(format!("vwap-{shards}.txt"));
        let cores = (0..shards)
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let stderr = run_to_end(&[
            "vwap",
            "--in",
            &format!("Orders@file:{}", data.path.display()),
            "--out",
            &format!("file:{}", out.display()),
            "--cores",
            &cores,
            "--no-pin",
            "--metrics-interval",
            "0",
        ]);
        assert!(stderr.contains("messages in 50000"), "{stderr}");
        let text = outputs(&out, shards);
        assert_eq!(text.lines().count(), windows.len(), "{shards} shard(s)");
        let orders: u64 = text
            .lines()
            .map(|l| l.split(',').nth(3).unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(orders, 50_000, "every order in exactly one tumbling window");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_file_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_bettong"))
        .args([
            "word-count",
            "--in",
            "file:/nonexistent/x.frames",
            "--out",
            "file:/tmp/x",
            "--cores",
            "0",
            "--no-pin",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/x.frames"), "{err}");
}
