#!/usr/bin/env bash
# What one shard of a 2-shard engine costs against a 1-shard engine doing the same work, on one
# thread, with the input streamed from memory and from the cache: alternating rounds, per-round
# ratios (this VM's speed swings between runs; a ratio within one round cancels most of it).
#
#   bash perf/shard_cost.sh            # 8 rounds, about 2 minutes after the build
#
# Each round runs, one process each (`bettong-peer run VARIANT --data DIR --workers 2 ...`):
#   engine    bettong-iter-engines --busy-shards 1: one 1-shard engine over the keys of shard 0
#             of 2 (the second engine is fed nothing)
#   shard     bettong-iter-local --busy-shards 1: shard 0 of one 2-shard engine over the same
#             keys (shard 1 is fed nothing, so nothing crosses): the source hands batches to the
#             key_by exchange, which routes each message and runs this shard's in place
#   both again with --window 500000: each feed reads its messages from the first 500 kB of its
#             share over and over, so the stream comes from the L2 cache, not from memory
# pinned to one CPU (`taskset -c 0`), so the idle shard's and engine's threads take nothing
# from the busy one but what they do on that CPU.
# And on both CPUs, with the window: bettong-iter on 1 and on 2 shards (half the keys cross).
#
# Settings (environment): ROUNDS [8], ROUND_MESSAGES [8000000], WINDOW [500000].
# Output: perf/results/shard-cost-<UTC timestamp>.txt (columns: round, label, M msgs/s, CPU ns
# per message) and the medians and per-round ratios on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-8}
MESSAGES=${ROUND_MESSAGES:-8000000}
WINDOW=${WINDOW:-500000}

cargo build --release --manifest-path perf/peer/Cargo.toml
BIN=perf/peer/target/release/bettong-peer

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
mkdir -p perf/results
OUT=perf/results/shard-cost-$STAMP.txt
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bettong-shard-cost.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$BIN" gen "$WORK/data" "$MESSAGES" >/dev/null

CPU0=$(taskset -pc $$ | sed 's/.*: //; s/[,-].*//')
RUNS=(
    "engine|taskset -c $CPU0|bettong-iter-engines --workers 2 --busy-shards 1"
    "shard|taskset -c $CPU0|bettong-iter-local --workers 2 --busy-shards 1"
    "engine-cached|taskset -c $CPU0|bettong-iter-engines --workers 2 --busy-shards 1 --window $WINDOW"
    "shard-cached|taskset -c $CPU0|bettong-iter-local --workers 2 --busy-shards 1 --window $WINDOW"
    "1-shard-cached||bettong-iter --workers 1 --window $WINDOW"
    "2-shards-cached||bettong-iter --workers 2 --window $WINDOW"
)
{
    echo "# $ROUNDS alternating rounds at $commit (\`bash perf/shard_cost.sh\`), $MESSAGES messages"
    for run in "${RUNS[@]}"; do
        IFS='|' read -r label prefix args <<<"$run"
        echo "#   $label: $prefix bettong-peer run $args --data DIR"
    done
    echo "# Columns: round label M msgs/s CPU ns per message."
} >"$OUT"
for ((r = 1; r <= ROUNDS; r++)); do
    for run in "${RUNS[@]}"; do
        IFS='|' read -r label prefix args <<<"$run"
        # shellcheck disable=SC2086
        line=$(timeout 60 $prefix "$BIN" run $args --data "$WORK/data" 2>/dev/null | tail -1) || {
            echo "round $r: $label failed or timed out" >&2
            continue
        }
        python3 perf/rounds_report.py line "$line" "$r" "$label" | tee -a "$OUT"
    done
done

python3 perf/rounds_report.py summary "$OUT" shard,engine shard-cached,engine-cached \
    engine-cached,engine 2-shards-cached,1-shard-cached
