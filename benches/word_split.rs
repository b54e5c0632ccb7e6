//! Word Count's splitter (`bettong_apps::word_count::split`: lowercase, split on spaces, strip
//! punctuation, one `String` per word) on one line of the Bill of Rights and on the whole text.
//! Throughput is in input bytes.

use std::hint::black_box;
use std::time::Duration;

use bettong_apps::word_count::split;
use bettong_giles::bench::SAMPLE_TEXT;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn word_split(c: &mut Criterion) {
    // The First Amendment: a typical line as the sender sends it (one line per message).
    let line = SAMPLE_TEXT
        .lines()
        .find(|l| l.starts_with("Congress shall make no law"))
        .expect("the sample text holds the First Amendment");

    let mut group = c.benchmark_group("word count split");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);

    group.throughput(Throughput::Bytes(line.len() as u64));
    let words = split(line).len();
    group.bench_function(format!("one line ({} B, {words} words)", line.len()), |b| {
        b.iter(|| split(black_box(line)))
    });

    group.throughput(Throughput::Bytes(SAMPLE_TEXT.len() as u64));
    let words = split(SAMPLE_TEXT).len();
    group.bench_function(
        format!("whole text ({} B, {words} words)", SAMPLE_TEXT.len()),
        |b| b.iter(|| split(black_box(SAMPLE_TEXT))),
    );
    group.finish();
}

criterion_group!(benches, word_split);
criterion_main!(benches);
