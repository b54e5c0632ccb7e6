#!/usr/bin/env bash
# What checkpoints cost (issue 12); a benchmark, not a test. Builds the release binary once and
# runs perf/checkpoint.py, which measures through the real `bettong` binary:
#   (a) Market Spread throughput, file sources -> file sink, with a checkpoint every 1 s as a
#       ratio of without (same command line, alternating runs);
#   (b) checkpoint duration and size per state entity (the engine's `checkpoint N: B bytes in D`
#       debug line; entities from the `restored checkpoint` line of a restart);
#   (c) recovery time for 1 M keys: word count killed with SIGKILL after a checkpoint, time from
#       the restart to its `restored checkpoint` line and to `ready`.
#
#   bash perf/checkpoint.sh
#
# Settings (environment): CKPT_RUNS [5], CKPT_ORDERS and CKPT_NBBO [10000000 each],
# CKPT_KEYS [1000000], CKPT_WC_PASSES [6], CKPT_WC_INTERVAL [500ms], CKPT_CORES [0,1].
# Result: perf/results/checkpoint-latest.md (also printed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin bettong
exec python3 perf/checkpoint.py
