//! Engines started and stopped many times in one process leave nothing behind: the same
//! number of open file descriptors (doorbells, io_uring rings, listeners, sink connections)
//! and no wake-up work that grows (pushers' waiters).
//!
//! (glommio 0.9 leaks one eventfd per executor that ends, glommio #448: the engine keeps its
//! shard executors for the next engine, which this test also checks.)
//!
//! Alone in its own test binary: other tests running in parallel threads would open and close
//! descriptors of their own while this one counts.

mod common;

use std::io::Write;
use std::net::TcpStream;

use bettong::{
    Application, DecodeError, Engine, EngineConfig, InProcessSource, Pipeline, TcpSink, TcpSource,
};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn fifty_start_stop_cycles_leave_the_fd_count_flat() {
    let sink = common::Sink::bind();
    let cycle = |i: u64| {
        let pushed = InProcessSource::new(|n: &u64| n);
        let framed = Pipeline::source(
            "Framed",
            TcpSource::new(|b: &[u8]| -> Result<u64, DecodeError> { Ok(b.len() as u64) }),
        );
        let app = Application::new(
            "lifecycle",
            framed
                .merge(Pipeline::source("Pushed", pushed.clone()))
                .key_by(|n: &u64| n)
                .to_state(|n: u64, seen: &mut u64| {
                    *seen += 1;
                    Some(n)
                })
                .to_sink(
                    "Out",
                    TcpSink::new(|n: &u64, out: &mut Vec<u8>| {
                        out.extend_from_slice(&n.to_be_bytes())
                    }),
                ),
        );
        let config = EngineConfig {
            cores: vec![0, 1],
            pin: false,
            inputs: vec![(Some("Framed".into()), "127.0.0.1:0".parse().unwrap())],
            outputs: vec![(None, sink.addr.into())],
            ..EngineConfig::default()
        };
        let engine = Engine::start(app, config).unwrap();
        let mut pusher = pushed.pusher().unwrap();
        pusher.push(i).unwrap();
        let addr = engine.sources()[0].1;
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(&common::frame(b"abc")).unwrap();
        drop(conn);
        drop(pusher);
        common::wait_finished(&engine, 2);
        let summary = engine.stop().unwrap();
        assert_eq!(summary.messages_out, 2);
    };
    // The first cycle settles what lives once per process (the clock, the allocator's arenas).
    cycle(0);
    let before = open_fds();
    for i in 1..=50 {
        cycle(i);
    }
    // Closes that finish after `stop` returns are not leaks: the test's own sink thread closes
    // the last cycle's connection once it reads its end, and the kernel releases an io_uring's
    // files when it tears the ring down, after the executor is gone (CI saw one socket more
    // than before, once). Wait a bounded time for the count to settle; a leak of one per
    // cycle is 50 descriptors and never settles.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while open_fds() != before && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let after = open_fds();
    if after != before {
        let mut kinds = std::collections::BTreeMap::new();
        for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let t = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let k = match t.split_once(':') {
                Some((kind, _)) if kind != "anon_inode" => kind.to_string(),
                _ => t,
            };
            *kinds.entry(k).or_insert(0) += 1;
        }
        eprintln!("open descriptors by kind: {kinds:?}");
    }
    assert_eq!(after, before, "open descriptors before and after 50 cycles");
    // Every cycle's outputs arrived: 2 per cycle, 8 bytes each.
    let bytes: usize = sink.finish().iter().map(Vec::len).sum();
    assert_eq!(bytes, 51 * 2 * 8);
}
