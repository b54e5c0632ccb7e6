#!/usr/bin/env bash
# The peer comparison: Market Spread on bettong, on timely dataflow and on a hand-written loop
# (the ceiling), in-process and over TCP, on the same generated data with the output count
# checked in every run. See perf/README.md ("Peer comparison") and perf/peer/src/main.rs.
#
#   bash perf/peer.sh            # about 2-3 minutes on 2 cores after the build
#
# Runs every variant PEER_RUNS times, round-robin (one process per run, starting one further
# along each round) so that machine noise hits all alike, then writes the medians and the ratio
# table to perf/results/peer-<UTC timestamp>.json and perf/results/peer-latest.md.
#
# Settings (environment):
#   PEER_RUNS          runs of each variant                                   [5]
#   PEER_MESSAGES      timed messages of the throughput runs (half orders)    [4000000]
#   PEER_WORKERS       worker/shard counts to run                             ["1 2"]
#   PEER_LAT_RATE      offered rate of the open-loop latency runs, msgs/s     [100000]
#   PEER_LAT_SECONDS   length of a latency run                                [3]
#   PEER_TIMEOUT       seconds before one run is abandoned                    [60]
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${PEER_RUNS:-5}
MESSAGES=${PEER_MESSAGES:-4000000}
WORKERS=${PEER_WORKERS:-1 2}
LAT_RATE=${PEER_LAT_RATE:-100000}
LAT_SECONDS=${PEER_LAT_SECONDS:-3}
LAT_MESSAGES=$((LAT_RATE * LAT_SECONDS))
TIMEOUT=${PEER_TIMEOUT:-60}

cargo build --release --manifest-path perf/peer/Cargo.toml
BIN=perf/peer/target/release/bettong-peer

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p perf/results
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bettong-peer.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Throughput data: what `bettong bench market-spread --messages $MESSAGES` generates (seed 1,
# 350 symbols, 15 rejected, one rejected order per 70 000). Latency data: the same generator with
# 5% of the orders on rejected symbols, so that every run has thousands of measured outputs.
"$BIN" gen "$WORK/data" "$MESSAGES"
"$BIN" gen "$WORK/lat" "$LAT_MESSAGES" $((LAT_MESSAGES / 2 / 20))

# One run per line: id|variant|workers|data|extra args
CONFIGS=("loop/1|loop|1|data|")
for w in $WORKERS; do
    CONFIGS+=("timely/$w|timely|$w|data|" "bettong-iter/$w|bettong-iter|$w|data|" "bettong/$w|bettong|$w|data|" "bettong-batch/$w|bettong-batch|$w|data|")
    # Across shards, the exchange's rings at 4096, the default before auto_ring_capacity; and
    # both engines with each worker fed only the messages it owns (nothing crosses), which
    # shows what the crossing costs each of them; W engines of one shard each, each over its
    # own keys (what W shards would do with no exchange between them); and the hand-written
    # loop on as many pinned threads, each over its own keys: how far this machine scales the
    # work with no engine.
    if [ "$w" -gt 1 ]; then
        CONFIGS+=("bettong-iter-4096/$w|bettong-iter-4096|$w|data|"
            "timely-local/$w|timely-local|$w|data|" "bettong-iter-local/$w|bettong-iter-local|$w|data|"
            "bettong-iter-engines/$w|bettong-iter-engines|$w|data|"
            "loop-local/$w|loop-local|$w|data|")
    fi
    CONFIGS+=("timely-tcp/$w|timely-tcp|$w|data|" "bettong-tcp/$w|bettong-tcp|$w|data|")
done
CONFIGS+=("latency/timely/1|timely|1|lat|--rate $LAT_RATE" "latency/timely-busy/1|timely-busy|1|lat|--rate $LAT_RATE"
    "latency/bettong/1|bettong|1|lat|--rate $LAT_RATE"
    "latency/bettong-spin/1|bettong-spin|1|lat|--rate $LAT_RATE")

RAW="$WORK/runs.jsonl"
: >"$RAW"
n=${#CONFIGS[@]}
echo "peer: $n variants x $RUNS runs on $(nproc) cores"
started=$(date +%s)
for ((rep = 0; rep < RUNS; rep++)); do
    for ((k = 0; k < n; k++)); do
        IFS='|' read -r id variant workers data extra <<<"${CONFIGS[$(((k + rep) % n))]}"
        json="$WORK/run.json"
        rm -f "$json"
        # shellcheck disable=SC2086
        args=(run "$variant" --data "$WORK/$data" --workers "$workers" $extra --json "$json")
        rc=0
        timeout "$TIMEOUT" "$BIN" "${args[@]}" >"$WORK/run.log" 2>&1 || rc=$?
        python3 - "$RAW" "$id" "$rep" "$rc" "$json" "$WORK/run.log" "bettong-peer ${args[*]:0:6} $extra" <<'PY'
import json, os, sys
raw, id_, rep, rc, jpath, log, cmd = sys.argv[1:]
e = {"id": id_, "rep": int(rep), "command": cmd}
if rc == "0" and os.path.exists(jpath):
    e["ok"] = True
    e["report"] = json.load(open(jpath))
else:
    e["ok"] = False
    e["exit_status"] = int(rc)
    e["log_tail"] = open(log, errors="replace").read()[-2000:]
with open(raw, "a") as f:
    f.write(json.dumps(e) + "\n")
r = e.get("report")
print("  [%d] %-20s %s" % (int(rep) + 1, id_, "FAILED (exit %s)" % rc if r is None else
      "%.2fM msgs/s %6.1f CPU ns/msg%s" % (r["msgs_per_sec"] / 1e6, r["cpu_ns_per_msg"],
      "" if not r["latency_ns"] else "  p50 %.1fus p99 %.1fus" % (r["latency_ns"]["p50"] / 1e3, r["latency_ns"]["p99"] / 1e3))))
PY
    done
done
echo "peer: runs took $(($(date +%s) - started)) s"

# PEER_COMMIT names the engine's commit where the tree is not a git checkout (an exported copy).
commit=${PEER_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
if [ -z "${PEER_COMMIT:-}" ] && [ "$commit" != unknown ] &&
    [ -n "$(git status --porcelain -- crates perf/peer 2>/dev/null)" ]; then
    commit="$commit+dirty"
fi
timely=$(grep -A1 '^name = "timely"$' perf/peer/Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
python3 perf/peer_report.py "$RAW" "perf/results/peer-$STAMP.json" perf/results/peer-latest.md \
    --timestamp "$STAMP" --nproc "$(nproc)" \
    --cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)" \
    --kernel "$(uname -r)" --commit "$commit" --timely "$timely" \
    --command "PEER_RUNS=$RUNS PEER_MESSAGES=$MESSAGES PEER_WORKERS=\"$WORKERS\" PEER_LAT_RATE=$LAT_RATE PEER_LAT_SECONDS=$LAT_SECONDS bash perf/peer.sh"
echo "peer: wrote perf/results/peer-$STAMP.json and perf/results/peer-latest.md"
cat perf/results/peer-latest.md
