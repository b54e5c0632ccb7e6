//! `IterSource`: every shard pulls its own share of the input on its own thread. Exact results
//! across shard counts (keys owned by other shards cross the exchange), per-key order, a stop
//! in the middle of an endless iterator, and latency recorded for every finished message.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bettong::runtime::config::EngineConfig;
use bettong::{Application, CallbackSink, Engine, IterSource, Pipeline};

fn config(shards: usize) -> EngineConfig {
    EngineConfig {
        cores: (0..shards).collect(),
        pin: false,
        ..EngineConfig::default()
    }
}

/// Per key, the sum so far and the last sequence number seen from each shard's iterator.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Tally {
    sum: u64,
    last: BTreeMap<u64, u64>,
}

/// Shard s of n emits (shard, key, seq) for seq in 0..PER_SHARD, key = seq % KEYS: every key
/// gets messages from every shard, so most of them cross to the shard that owns the key.
#[test]
fn every_shard_count_gives_exact_sums_in_order() {
    const PER_SHARD: u64 = 40_000;
    const KEYS: u64 = 53;
    for shards in [1, 2, 3, 4] {
        let source = IterSource::new(|shard, _shards| {
            (0..PER_SHARD).map(move |seq| (shard as u64, seq % KEYS, seq))
        });
        let finals = Arc::new(Mutex::new(BTreeMap::new()));
        let out = finals.clone();
        let app = Application::new(
            "iter sums",
            Pipeline::source("Numbers", source)
                .key_by(|m: &(u64, u64, u64)| &m.1)
                .to_state(|(from, key, seq): (u64, u64, u64), t: &mut Tally| {
                    // Each shard's iterator reaches a key in order.
                    if let Some(prev) = t.last.insert(from, seq) {
                        assert!(
                            prev < seq,
                            "key {key} from shard {from}: {seq} after {prev}"
                        );
                    }
                    t.sum += seq;
                    Some((key, t.sum))
                })
                .to_sink(
                    "Sums",
                    CallbackSink::new(move |(key, sum): &(u64, u64)| {
                        let mut f = out.lock().unwrap();
                        let e = f.entry(*key).or_insert(0);
                        *e = (*e).max(*sum);
                    }),
                ),
        );
        let summary = Engine::start(app, config(shards)).unwrap().join().unwrap();
        let n = shards as u64 * PER_SHARD;
        assert_eq!(summary.messages_in, n, "{shards} shards");
        assert_eq!(summary.messages_out, n, "{shards} shards");
        // Every finished message has its latency recorded (the clock is read once per group
        // of messages and at the end of each batch, never skipped).
        assert_eq!(summary.latency.len(), n, "{shards} shards");
        let expected: BTreeMap<u64, u64> = (0..KEYS)
            .map(|k| {
                let per_shard: u64 = (0..PER_SHARD).filter(|s| s % KEYS == k).sum();
                (k, per_shard * shards as u64)
            })
            .collect();
        assert_eq!(*finals.lock().unwrap(), expected, "{shards} shards");
    }
}

/// An endless iterator on 1 and 3 shards: a stop ends the engine; everything that was pulled
/// was finished (nothing pulled is lost), and the shards stopped pulling. On 1 shard the state
/// computation takes the source's batches itself, on 3 the exchange's runs: either way it
/// counts the messages without output once per batch or run, and every one is counted.
#[test]
fn stop_ends_an_endless_source() {
    for shards in [1, 3] {
        stop_ends_an_endless_source_on(shards);
    }
}

fn stop_ends_an_endless_source_on(shards: usize) {
    let outputs = Arc::new(AtomicU64::new(0));
    let out = outputs.clone();
    let app = Application::new(
        "endless",
        Pipeline::source("Forever", IterSource::new(|_, _| 0u64..))
            .key_by(|n: &u64| n)
            .to_state(|n: u64, seen: &mut u64| {
                *seen += 1;
                (n % 3 == 0).then_some(n)
            })
            .to_sink(
                "Out",
                CallbackSink::new(move |_: &u64| {
                    out.fetch_add(1, Ordering::Relaxed);
                }),
            ),
    );
    let engine = Engine::start(app, config(shards)).unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while engine.progress().finished < 200_000 {
        assert!(Instant::now() < until, "no progress");
        std::thread::yield_now();
    }
    let summary = engine.stop().unwrap();
    assert!(summary.messages_in >= 200_000);
    assert_eq!(
        summary.messages_in,
        summary.messages_out + summary.filtered,
        "pulled but not finished, {shards} shards"
    );
    assert_eq!(summary.messages_out, outputs.load(Ordering::Relaxed));
    assert_eq!(summary.latency.len(), summary.messages_in);
}
