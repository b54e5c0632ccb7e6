# Convenience recipes; every one is a plain cargo command (see README.md).

# Build the release binary.
build:
    cargo build --release

# Run the test suite (the README's test command).
test:
    cargo test

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

# The unsafe code that runs without io_uring, under Miri (needs the nightly toolchain's miri
# component: `rustup +nightly component add miri`): the exchange's split, the frames'
# read-ahead, and the ring (with full fences in place of `membarrier`, which Miri cannot call;
# the threaded test that parks is left out: its 200 000 values take Miri too long).
miri:
    cargo +nightly miri test -p bettong --lib runtime::split
    cargo +nightly miri test -p bettong --lib codec::frames
    cargo +nightly miri test -p bettong --lib runtime::run
    cargo +nightly miri test -p bettong --lib runtime::ring -- --skip cross_thread_with_parking

# The main job: a Market Spread run on generated data, with throughput and latency.
run *ARGS:
    cargo run --release -- bench market-spread {{ARGS}}

# Criterion micro-benchmarks.
bench:
    cargo bench

# The end-to-end performance harness: every benchmark 5 times (PERF_RUNS), medians against the
# relay baseline; results in perf/results/ (see perf/run.sh for the settings).
perf:
    bash perf/run.sh

# The peer comparison against timely dataflow and the hand-written loop, then 10 alternating
# rounds of it (per-round ratios; see perf/README.md).
peer:
    PEER_RUNS=3 PEER_MESSAGES=16000000 bash perf/peer.sh
    bash perf/rounds.sh
