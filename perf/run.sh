#!/usr/bin/env bash
# The end-to-end performance harness (DESIGN.md §3): builds the release binary once, then runs
# every benchmark PERF_RUNS times, round-robin (each round runs every benchmark once, starting
# one further along each round), so that whatever noise the machine has hits all of them alike.
# Reports the median with min and max, and every throughput as a ratio of the engine-free relay
# baseline measured in the same invocation.
#
#   bash perf/run.sh            # or: just perf
#
# Benchmarks (all through `bettong bench`, the same sender and receiver code):
#   * blast throughput of market-spread, word-count and passthrough at 1 and 2 shards, each with
#     --poll park and --poll spin;
#   * the relay baseline (`bench relay`: plain threads and sockets, no engine);
#   * latency: market-spread paced at PERF_LAT_RATE msgs/s on 2 shards, --poll spin and park.
#
# Settings (environment):
#   PERF_RUNS          runs of each benchmark                          [5]
#   PERF_MESSAGES      market-spread blast messages                    [2000000]
#   PERF_WC_MESSAGES   word-count blast lines (about 24 outputs each)  [200000]
#   PERF_PT_MESSAGES   passthrough and relay blast frames              [10000000]
#                      (they run at 5-20 M frames/s; 2 M would last 0.1-0.3 s, mostly noise)
#   PERF_PT2_CONNS     sender connections for 2-shard passthrough      [8]
#                      (the kernel spreads connections over the shards by a hash, so with one
#                      per shard both land on the same shard half the time)
#   PERF_LAT_RATE      offered rate of the latency runs, msgs/s        [1000000; 200000 below 4 cores]
#   PERF_LAT_SECONDS   length of the latency runs at that rate         [2]
#   PERF_TIMEOUT       seconds before one run is abandoned             [30]
#                      (a benchmark that runs out of time once is not run again in this
#                      invocation; the table gives the upper bound on its rate that this shows:
#                      on a small machine `--poll spin` at 2 shards can collapse that far)
#
# Results: perf/results/<UTC timestamp>.json (machine, settings, every run raw, medians) and
# perf/results/latest.md (the table). A failed run is recorded as failed and the harness goes on.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${PERF_RUNS:-5}
MESSAGES=${PERF_MESSAGES:-2000000}
WC_MESSAGES=${PERF_WC_MESSAGES:-200000}
PT_MESSAGES=${PERF_PT_MESSAGES:-10000000}
PT2_CONNS=${PERF_PT2_CONNS:-8}
NPROC=$(nproc)
if [ "$NPROC" -ge 4 ]; then default_rate=1000000; else default_rate=200000; fi
LAT_RATE=${PERF_LAT_RATE:-$default_rate}
LAT_SECONDS=${PERF_LAT_SECONDS:-2}
LAT_MESSAGES=$((LAT_RATE * LAT_SECONDS))
TIMEOUT=${PERF_TIMEOUT:-30}

cargo build --release
BIN=target/release/bettong

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p perf/results
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bettong-perf.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# One benchmark per line: id|app|shards|poll|connections|rate|messages
# (an empty field means the bench default; shards 0 is the relay, which has none).
CONFIGS=()
for poll in park spin; do
    for shards in 1 2; do
        conns=""
        if [ "$shards" = 2 ]; then conns=$PT2_CONNS; fi
        CONFIGS+=("market-spread/s$shards/$poll|market-spread|$shards|$poll|||$MESSAGES")
        CONFIGS+=("word-count/s$shards/$poll|word-count|$shards|$poll|||$WC_MESSAGES")
        CONFIGS+=("passthrough/s$shards/$poll|passthrough|$shards|$poll|$conns||$PT_MESSAGES")
    done
done
CONFIGS+=("relay|relay|0|park|||$PT_MESSAGES")
for poll in spin park; do
    CONFIGS+=("latency/market-spread/s2/$poll|market-spread|2|$poll||$LAT_RATE|$LAT_MESSAGES")
done

RAW="$WORK/runs.jsonl"
: >"$RAW"
declare -A TIMED_OUT=()
n=${#CONFIGS[@]}
echo "perf: $n benchmarks x $RUNS runs on $NPROC cores"
started=$(date +%s)
for ((rep = 0; rep < RUNS; rep++)); do
    for ((k = 0; k < n; k++)); do
        IFS='|' read -r id app shards poll conns rate messages <<<"${CONFIGS[$(((k + rep) % n))]}"
        if [ -n "${TIMED_OUT[$id]:-}" ]; then
            continue
        fi
        args=(bench "$app" --messages "$messages" --poll "$poll")
        if [ "$shards" != 0 ]; then
            args+=(--shards "$shards")
            # Oversubscribing a small machine needs unpinned shards.
            if [ "$shards" -gt "$NPROC" ]; then args+=(--no-pin); fi
        fi
        if [ -n "$conns" ]; then args+=(--connections "$conns"); fi
        if [ -n "$rate" ]; then args+=(--rate "$rate"); fi
        json="$WORK/run.json"
        rm -f "$json"
        t0=$(date +%s.%N)
        rc=0
        timeout "$TIMEOUT" "$BIN" "${args[@]}" --json "$json" >"$WORK/run.log" 2>&1 || rc=$?
        t1=$(date +%s.%N)
        if [ "$rc" = 0 ] && [ -s "$json" ]; then ok=true; else ok=false; fi
        python3 - "$RAW" "$id" "$rep" "$ok" "$rc" "$TIMEOUT" "$messages" "$json" "$WORK/run.log" \
            "$t0" "$t1" "${args[*]}" <<'EOF'
import json, sys
raw, id_, rep, ok, rc, timeout, messages, jpath, log, t0, t1, cmd = sys.argv[1:]
entry = {"id": id_, "rep": int(rep), "ok": ok == "true", "command": "bettong " + cmd,
         "wall_s": round(float(t1) - float(t0), 3)}
if entry["ok"]:
    entry["report"] = json.load(open(jpath))
else:
    entry["exit_status"] = int(rc)
    if rc == "124":
        entry["timed_out_s"] = int(timeout)
        entry["messages"] = int(messages)
    entry["log_tail"] = open(log, errors="replace").read()[-2000:]
with open(raw, "a") as f:
    f.write(json.dumps(entry) + "\n")
EOF
        if [ "$ok" = true ]; then
            printf '  [%d/%d] %-34s %s msgs/s\n' $((rep + 1)) "$RUNS" "$id" \
                "$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["msgs_per_sec"]))' "$json")"
        elif [ "$rc" = 124 ]; then
            TIMED_OUT[$id]=1
            printf '  [%d/%d] %-34s TIMED OUT after %s s; not run again\n' $((rep + 1)) "$RUNS" "$id" "$TIMEOUT"
        else
            printf '  [%d/%d] %-34s FAILED (exit %s; see the results JSON)\n' $((rep + 1)) "$RUNS" "$id" "$rc"
        fi
    done
done
echo "perf: runs took $(($(date +%s) - started)) s"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    commit="$commit+dirty"
fi
python3 perf/aggregate.py "$RAW" "perf/results/$STAMP.json" perf/results/latest.md \
    --timestamp "$STAMP" --nproc "$NPROC" \
    --cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)" \
    --kernel "$(uname -r)" --commit "$commit" \
    --settings "runs=$RUNS messages=$MESSAGES wc_messages=$WC_MESSAGES pt_messages=$PT_MESSAGES pt2_connections=$PT2_CONNS lat_rate=$LAT_RATE lat_messages=$LAT_MESSAGES"
echo "perf: wrote perf/results/$STAMP.json and perf/results/latest.md"
cat perf/results/latest.md
