#!/usr/bin/env bash
# Instructions per message of Market Spread, counted by callgrind: stable on a noisy machine
# (instructions do not depend on what else runs), so engine changes can be compared exactly.
#
#   bash perf/callgrind.sh          # about 7 minutes after the build (2 cores)
#
# Variants (perf/peer, one process each, run under `valgrind --tool=callgrind`):
#   loop     the hand-written loop: decode, HashMap<symbol, SymbolData> (Fx), check
#   bettong  1 shard, the in-process path: a host thread decodes and pushes (InProcessSource,
#            keyed by symbol), the shard's source task drains the ring through the
#            spread-check operator into a CallbackSink
#   bettong-batch  the same, with one Pusher::push_batch per chunk instead of a push per message
#   bettong-iter   1 shard, IterSource: the shard decodes the stream itself and runs it through
#            the operators; collected: the source task (`SourceNode` build closure), which is
#            the whole data path (the iterator's decode included) and never waits
# Each variant runs with N messages and with 0; instructions/message = (I(N) - I(0)) / N, so
# start-up, priming and shutdown cancel out. Collection is limited (--toggle-collect) to the
# data path, which never spins:
#   loop:    bettong_peer::run_loop
#   bettong: bettong_peer::push_chunk (decode, route, push, publish, doorbell) and the
#            shard's takes from the rings (bettong::connect::in_process::take: the clock read
#            and every message through the operators into the sink). The source task's loop
#            around the take
#            is left out: under --poll spin it looks at its rings between drains for as long
#            as the host takes to push, so its count depends on timing; what it does once per
#            drain (flush, backpressure check) came to under 1 instruction per message when
#            it was counted (the whole task, at commit bd115f8).
# The host pushes CG_CHUNK messages at a time (fewer than a pusher ring holds) and waits for the
# shard outside push_chunk, so a chunk of CG_CHUNK messages costs one wake-up of the shard. The
# shards run --poll spin (valgrind 3.19 deadlocks a shard parked in io_uring_enter); the spinning
# itself is in glommio's executor loop and the source task's loop, outside what is collected.
# --fair-sched=yes: valgrind runs one thread at a time, and its default lock is unfair: a thread
# that gives it up and asks again at once usually gets it back. The spinning shard (glommio's
# spin loop makes no syscall) then starved the host thread: 3,000 messages under
# `valgrind --tool=none` took 5.4 s with the default lock and 1.1 s with the fair one (natively
# 0.04 s for 100,000): ~1.5 s per chunk, minutes per count. With it the whole script takes ~12 s.
#
# Over TCP (a second table): `bettong bench market-spread` and `bench passthrough` on 1 shard
# (--poll spin), the whole loopback run under callgrind, collected in the shard's tasks
# (glommio::task::raw::RawTask::run: the connection tasks that read, decode and run the
# operators, and the sink's writer; the executor's own polling loop is outside). bench cannot
# run 0 messages, so per message = (I(2M) - I(M)) / M with M = CG_TCP_MESSAGES.
#
# Across shards (a third table): `bettong-iter` on 1 to 4 shards (3 and 4 unpinned on this
# 2-core machine: valgrind runs one thread at a time anyway), and `bettong-iter-local` on 2
# (each shard fed only the keys it owns: nothing crosses), collected in the source tasks and the
# exchange's drain tasks (`bettong::runtime::exchange::drain`, where messages from the other
# shard run through the operators), with callgrind's branch simulation on: instructions and
# mispredicted branches per message, (X(N) - X(0)) / N. The simulated predictor is simpler than
# the CPU's, but the same for every run: what crossing costs shows up here, where instructions
# alone hide it (the exchange's "is this key mine?" branch goes either way at random when keys
# cross).
#
# Settings (environment): CG_MESSAGES [100000], CG_CHUNK [1024], CG_REPEAT [2] (each count is
# taken this many times, to show that it repeats), CG_TCP_MESSAGES [200000] (0 skips the TCP
# table), CG_SHARDS_TABLE [1] (0 skips the table across shards).
#
# Output: the table on stdout and in perf/results/callgrind-latest.md, the annotated profile of
# the bettong run (per function, inclusive and self) in perf/results/callgrind-latest-bettong.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${CG_MESSAGES:-100000}
CHUNK=${CG_CHUNK:-1024}
REPEAT=${CG_REPEAT:-2}
TCP_N=${CG_TCP_MESSAGES:-200000}
SHARDS_TABLE=${CG_SHARDS_TABLE:-1}

cargo build --release --manifest-path perf/peer/Cargo.toml
cargo build --release --bin bettong
ENGINE=$PWD/target/release/bettong
BIN=$PWD/perf/peer/target/release/bettong-peer
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bettong-cg.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$BIN" gen "$WORK/data" "$N" 2>/dev/null

declare -A TOGGLES=(
    [loop]="--toggle-collect=bettong_peer::run_loop"
    [bettong]="--toggle-collect=bettong_peer::push_chunk --toggle-collect=bettong::connect::in_process::take*"
    [bettong-batch]="--toggle-collect=bettong_peer::push_chunk --toggle-collect=bettong::connect::in_process::take*"
    [bettong-iter]="--toggle-collect=*SourceNode*build*closure*"
)

# count VARIANT MESSAGES OUTFILE: prints the instructions collected.
count() {
    # shellcheck disable=SC2086
    local batch=0
    [ "$1" = bettong-batch ] && batch=1
    PEER_BATCH=$batch PEER_POLL=spin PEER_CHUNK=$CHUNK timeout -s KILL 600 valgrind --tool=callgrind --fair-sched=yes \
        --callgrind-out-file="$3" ${TOGGLES[$1]} \
        "$BIN" run "${1%-batch}" --data "$WORK/data" --messages "$2" >"$WORK/log" 2>&1 ||
        { tail -20 "$WORK/log" >&2; return 1; }
    sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p' "$WORK/log"
}

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
commit=${PEER_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p perf/results
MD=perf/results/callgrind-latest.md
{
    echo "# Instructions per message, Market Spread on 1 shard ($STAMP)"
    echo
    echo "\`CG_MESSAGES=$N CG_CHUNK=$CHUNK bash perf/callgrind.sh\` — commit $commit, $(valgrind --version)."
    echo "Per message = (I(N) − I(0)) / N, collected only in the data path (see the script)."
    echo
    echo "| variant | I(N=$N) | I(0) | instructions/message | repeats of I(N) |"
    echo "|---|---|---|---|---|"
} >"$MD"
for v in loop bettong bettong-batch bettong-iter; do
    runs=()
    for ((r = 0; r < REPEAT; r++)); do runs+=("$(count "$v" "$N" "$WORK/cg.$v.$r")"); done
    zero=$(count "$v" 0 "$WORK/cg.$v.zero")
    per=$(python3 -c 'import sys; a, z, n = map(int, sys.argv[1:]); print(f"{(a - z) / n:.1f}")' \
        "${runs[0]}" "$zero" "$N")
    echo "| $v | ${runs[0]} | $zero | $per | ${runs[*]} |" >>"$MD"
    printf '%-8s I(N)=%s I(0)=%s  %s instructions/message  (repeats: %s)\n' "$v" "${runs[0]}" "$zero" "$per" "${runs[*]}"
done
# count_tcp APP MESSAGES OUTFILE: prints the instructions collected in the shard's tasks.
count_tcp() {
    timeout -s KILL 600 valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file="$3" \
        '--toggle-collect=glommio::task::raw::RawTask*run' \
        "$ENGINE" bench "$1" --shards 1 --poll spin --messages "$2" >"$WORK/log" 2>&1 ||
        { tail -20 "$WORK/log" >&2; return 1; }
    sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p' "$WORK/log"
}
if [ "$TCP_N" -gt 0 ]; then
    {
        echo
        echo "Over TCP: \`bettong bench APP --shards 1 --poll spin\` under callgrind, collected in the"
        echo "shard's tasks; per message = (I(2M) − I(M)) / M, M = $TCP_N (\`CG_TCP_MESSAGES\`)."
        echo
        echo "| app | I(M) | I(2M) | instructions/message | repeats of I(2M) |"
        echo "|---|---|---|---|---|"
    } >>"$MD"
    for app in market-spread passthrough; do
        one=$(count_tcp "$app" "$TCP_N" "$WORK/cgt.$app.1")
        runs=()
        for ((r = 0; r < REPEAT; r++)); do runs+=("$(count_tcp "$app" $((2 * TCP_N)) "$WORK/cgt.$app.2.$r")"); done
        per=$(python3 -c 'import sys; b, a, n = map(int, sys.argv[1:]); print(f"{(b - a) / n:.1f}")' \
            "${runs[0]}" "$one" "$TCP_N")
        echo "| $app | $one | ${runs[0]} | $per | ${runs[*]} |" >>"$MD"
        printf 'tcp %-13s I(M)=%s I(2M)=%s  %s instructions/message  (repeats: %s)\n' "$app" "$one" "${runs[0]}" "$per" "${runs[*]}"
    done
fi
# count_branches VARIANT WORKERS MESSAGES OUTFILE: prints the instructions and the mispredicted
# branches (conditional and indirect) collected in the source and drain tasks.
count_branches() {
    PEER_POLL=spin timeout -s KILL 600 valgrind --tool=callgrind --fair-sched=yes --branch-sim=yes \
        --callgrind-out-file="$4" '--toggle-collect=*SourceNode*build*closure*' \
        '--toggle-collect=bettong::runtime::exchange::drain*' \
        "$BIN" run "$1" --data "$WORK/data" --workers "$2" --messages "$3" >"$WORK/log" 2>&1 ||
        { tail -20 "$WORK/log" >&2; return 1; }
    # Collected : Ir Bc Bcm Bi Bim
    sed -n 's/^==[0-9]*== Collected : \([0-9]*\) [0-9]* \([0-9]*\) [0-9]* \([0-9]*\)$/\1 \2 \3/p' "$WORK/log" |
        awk '{print $1, $2 + $3}'
}
if [ "$SHARDS_TABLE" -gt 0 ]; then
    {
        echo
        echo "Across shards: \`bettong-iter\` (IterSource) under callgrind with \`--branch-sim=yes\`, collected in"
        echo "the source and exchange drain tasks; per message = (X(N) − X(0)) / N. \`-local\`: each shard is fed"
        echo "only the keys it owns, so nothing crosses."
        echo
        echo "| variant | shards | instructions/message | mispredicted branches/message | repeats of X(N) |"
        echo "|---|---|---|---|---|"
    } >>"$MD"
    for row in "bettong-iter 1" "bettong-iter 2" "bettong-iter-local 2" "bettong-iter 3" "bettong-iter 4"; do
        read -r v w <<<"$row"
        runs=()
        for ((r = 0; r < REPEAT; r++)); do
            runs+=("$(count_branches "$v" "$w" "$N" "$WORK/cgb.$v.$w.$r")")
        done
        zero=$(count_branches "$v" "$w" 0 "$WORK/cgb.$v.$w.zero")
        per=$(python3 -c 'import sys; i, b, zi, zb, n = map(int, sys.argv[1:]); print(f"{(i - zi) / n:.1f} | {(b - zb) / n:.3f}")' \
            ${runs[0]} $zero "$N")
        reps=$(printf '%s, ' "${runs[@]/ / / }")
        echo "| $v | $w | $per | ${reps%, } |" >>"$MD"
        printf 'shards %-18s %s  %s instructions | mispredictions per message  (repeats: %s)\n' "$v" "$w" "$per" "${reps%, }"
    done
fi
# Per function, inclusive then self, without the libc/std start-up frames (which only wrap).
OUT=perf/results/callgrind-latest-bettong.txt
{
    echo "# callgrind, bettong variant, N=$N, chunk $CHUNK, commit $commit: inclusive"
    callgrind_annotate --inclusive=yes "$WORK/cg.bettong.0" >"$WORK/incl.txt" 2>&1 || true
    grep -v -e 'libc.so' -e 'ld-linux' -e '/rustc/' -e 'below main' -e '???:main' "$WORK/incl.txt" | sed -n '1,70p'
    echo
    echo "# self"
    callgrind_annotate "$WORK/cg.bettong.0" >"$WORK/self.txt" 2>&1 || true
    sed -n '/file:function/,$p' "$WORK/self.txt" | sed -n '1,45p'
} | cut -c1-240 >"$OUT"
echo "perf: wrote $MD and perf/results/callgrind-latest-bettong.txt"
