#!/usr/bin/env bash
# Alternating rounds of the peer harness: the per-round ratios that the README's benchmark
# section trusts over single runs (this VM's speed swings by a third between runs, and a ratio
# of two variants run back to back within one round cancels most of that).
#
#   bash perf/rounds.sh                 # 10 rounds of the default variants, about 5 minutes
#   ROUNDS=20 bash perf/rounds.sh bettong-iter:1 timely:1
#
# Each round runs every VARIANT:WORKERS once, in order, one process each (`bettong-peer run
# VARIANT --data DIR --workers W`), on one data set of ROUND_MESSAGES messages (8 M) generated
# once. Writes the per-round lines to perf/results/scaling-<UTC timestamp>.txt (columns: round,
# variant/workers, M msgs/s, CPU ns per message) and prints each variant's median and, for the
# pairs below whose both sides ran, the median of the per-round ratios and in how many rounds
# the ratio was above 1.
#
# Settings (environment):
#   ROUNDS          rounds                                    [10]
#   ROUND_MESSAGES  messages of the data set                  [8000000]
#   ROUND_TIMEOUT   seconds before one run is abandoned       [60]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-10}
MESSAGES=${ROUND_MESSAGES:-8000000}
TIMEOUT=${ROUND_TIMEOUT:-60}
if [ $# -gt 0 ]; then
    VARIANTS=("$@")
else
    VARIANTS=(bettong-iter:1 bettong-iter:2 timely:1 timely:2 bettong:1 bettong:2 loop:1
        loop-local:2 bettong-iter-engines:2 bettong-iter-local:2)
fi

cargo build --release --manifest-path perf/peer/Cargo.toml
BIN=perf/peer/target/release/bettong-peer

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
mkdir -p perf/results
OUT=perf/results/scaling-$STAMP.txt
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bettong-rounds.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$BIN" gen "$WORK/data" "$MESSAGES" >/dev/null

{
    echo "# $ROUNDS alternating rounds at $commit (\`ROUNDS=$ROUNDS bash perf/rounds.sh ${VARIANTS[*]}\`), $MESSAGES messages"
    echo "# of bettong-peer gen DIR $MESSAGES; each round: bettong-peer run VARIANT --data DIR --workers W for"
    echo "#   ${VARIANTS[*]}"
    echo "# Columns: round variant/workers M msgs/s CPU ns per message."
} >"$OUT"
for ((r = 1; r <= ROUNDS; r++)); do
    for vw in "${VARIANTS[@]}"; do
        v=${vw%:*}
        w=${vw#*:}
        line=$(timeout "$TIMEOUT" "$BIN" run "$v" --data "$WORK/data" --workers "$w" 2>/dev/null | tail -1) || {
            echo "round $r: $v/$w failed or timed out" >&2
            continue
        }
        python3 perf/rounds_report.py line "$line" "$r" "$v/$w" | tee -a "$OUT"
    done
done

python3 perf/rounds_report.py summary "$OUT" \
    bettong-iter/1,timely/1 bettong-iter/2,timely/2 bettong/1,timely/1 bettong/2,timely/2 \
    bettong-iter/2,bettong-iter/1 timely/2,timely/1 loop-local/2,loop/1 \
    bettong-iter-engines/2,bettong-iter/1 bettong-iter-local/2,bettong-iter/1 \
    bettong-tcp/1,timely-tcp/1 bettong-tcp/2,timely-tcp/2 bettong-tcp/2,bettong-tcp/1 \
    timely-tcp/2,timely-tcp/1
