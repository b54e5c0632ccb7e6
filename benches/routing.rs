//! Key to shard: bettong's stable hash (FNV-1a + fmix64) and `shard_for`, against std's SipHash
//! (`DefaultHasher`, what a `HashMap` would use) and rustc-hash's Fx, plus the per-shard state
//! lookup (`FxHashMap<[u8; 4], _>`) that follows routing in Market Spread.
//!
//! Each iteration hashes every key of a fixed set; throughput is per key.

use std::collections::hash_map::DefaultHasher;
use std::hash::{BuildHasher, Hasher};
use std::hint::black_box;
use std::time::Duration;

use bettong::runtime::router::{hash_bytes, shard_for};
use bettong_apps::market_spread::pad_symbol;
use bettong_apps::word_count::split;
use bettong_giles::bench::SAMPLE_TEXT;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustc_hash::{FxBuildHasher, FxHashMap};

const TICKERS: [&str; 32] = [
    "AAPL", "AMZN", "BA", "C", "CAT", "CSCO", "CVX", "DIS", "F", "GE", "GOOG", "GS", "HD", "IBM",
    "INSM", "INTC", "JNJ", "JPM", "KO", "MCD", "MMM", "MRK", "MSFT", "NKE", "PFE", "PG", "T",
    "TRV", "UNH", "V", "VZ", "XOM",
];

fn sip(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

fn fx(bytes: &[u8]) -> u64 {
    let mut h = FxBuildHasher.build_hasher();
    h.write(bytes);
    h.finish()
}

fn routing(c: &mut Criterion) {
    let symbols: Vec<[u8; 4]> = TICKERS.iter().map(|t| pad_symbol(t)).collect();
    let words: Vec<String> = split(SAMPLE_TEXT).into_iter().take(64).collect();
    let word_bytes: usize = words.iter().map(String::len).sum();
    let shards = 4usize;

    let mut group = c.benchmark_group("key to shard: stable hash vs std SipHash");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);

    group.throughput(Throughput::Elements(symbols.len() as u64));
    group.bench_function("symbol (4 B): stable hash + shard_for", |b| {
        b.iter(|| {
            let n = black_box(shards);
            let mut acc = 0usize;
            for s in black_box(&symbols) {
                acc = acc.wrapping_add(shard_for(hash_bytes(s), n));
            }
            acc
        })
    });
    group.bench_function("symbol (4 B): std SipHash + %", |b| {
        b.iter(|| {
            let n = black_box(shards) as u64;
            let mut acc = 0u64;
            for s in black_box(&symbols) {
                acc = acc.wrapping_add(sip(s) % n);
            }
            acc
        })
    });
    group.bench_function("symbol (4 B): FxHasher + %", |b| {
        b.iter(|| {
            let n = black_box(shards) as u64;
            let mut acc = 0u64;
            for s in black_box(&symbols) {
                acc = acc.wrapping_add(fx(s) % n);
            }
            acc
        })
    });
    let map: FxHashMap<[u8; 4], u64> = symbols.iter().zip(0u64..).map(|(s, i)| (*s, i)).collect();
    group.bench_function("symbol (4 B): FxHashMap<[u8;4], u64> get", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for s in black_box(&symbols) {
                acc = acc.wrapping_add(*map.get(s).expect("every symbol is in the map"));
            }
            acc
        })
    });

    group.throughput(Throughput::Elements(words.len() as u64));
    let avg = word_bytes as f64 / words.len() as f64;
    group.bench_function(
        format!("word (avg {avg:.1} B): stable hash + shard_for"),
        |b| {
            b.iter(|| {
                let n = black_box(shards);
                let mut acc = 0usize;
                for w in black_box(&words) {
                    acc = acc.wrapping_add(shard_for(hash_bytes(w.as_bytes()), n));
                }
                acc
            })
        },
    );
    group.bench_function(format!("word (avg {avg:.1} B): std SipHash + %"), |b| {
        b.iter(|| {
            let n = black_box(shards) as u64;
            let mut acc = 0u64;
            for w in black_box(&words) {
                acc = acc.wrapping_add(sip(w.as_bytes()) % n);
            }
            acc
        })
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
