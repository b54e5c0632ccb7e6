//! Word Count's splitter (`bettong_apps::word_count::split`: lowercase, split on spaces, strip
//! punctuation, one `String` per word) on one line of the Bill of Rights and on the whole text.
//! Throughput is in input bytes.

use std::hint::black_box;
use std::time::Duration;

use bettong_apps::word_count::{split, Words};
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

    // What the pipeline does per line, as it did it before (the `String` the decoder made,
    // split by the rules as first written into a `Vec<String>`) and as it does it now (that
    // `String` handed to `Words`, each word taken as it is cut).
    group.bench_function("one line, pipeline, rules as first written", |b| {
        b.iter(|| {
            // The decoder's `String`, which the old splitter then borrowed.
            let decoded: String = black_box(line).to_string();
            split_as_first_written(&decoded)
        })
    });
    group.bench_function("one line, pipeline, Words", |b| {
        b.iter(|| Words::new(black_box(line).to_string()).for_each(|w| drop(black_box(w))))
    });

    group.throughput(Throughput::Bytes(SAMPLE_TEXT.len() as u64));
    let words = split(SAMPLE_TEXT).len();
    group.bench_function(
        format!("whole text ({} B, {words} words)", SAMPLE_TEXT.len()),
        |b| b.iter(|| split(black_box(SAMPLE_TEXT))),
    );
    group.finish();
}

/// The splitter before `Words`: lowercase each line into a new `String`, find punctuation with
/// `str::contains`, collect a `Vec<String>` per line.
fn split_as_first_written(text: &str) -> Vec<String> {
    const STRIP: &str = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
    let strip = |c: char| STRIP.contains(c);
    let mut words = Vec::new();
    for line in text.split('\n') {
        let line = line.to_lowercase();
        for piece in line.trim_matches(strip).split(' ') {
            let word = piece.trim_matches(strip);
            if !word.is_empty() {
                words.push(word.to_string());
            }
        }
    }
    words
}

criterion_group!(benches, word_split);
criterion_main!(benches);
