#!/usr/bin/env python3
"""What checkpoints cost (issue 12); a benchmark, not a test. `perf/checkpoint.sh` builds the
release binary and runs this. Three measurements, all through the real `bettong` binary:

(a) Market Spread throughput with a checkpoint every 1 s as a ratio of without: the same
    command line (both files of `bettong gen market-spread` replayed from file sources into a
    file sink, the engine stopping by itself at their end) with and without
    `--resilience-dir D --time-between-checkpoints 1s`, alternating, the order swapped each
    round so that machine drift hits both alike. The TCP bench runner (`bettong bench`) has no
    resilience flags, and a TCP source cannot replay anyway: the file run is what a
    resilient back-test does. msgs/s = messages in (from the summary) / wall time of the process.
(b) Checkpoint duration and size per state entity: the engine's own debug line
    `checkpoint N: B bytes in D` (start of the checkpoint to its committed manifest), from the
    checkpointed Market Spread runs (350 symbols) and from the word count run of (c) (1 M words);
    the entity count comes from the `restored checkpoint N (K state entities)` line of a restart.
(c) Recovery time for 1 M keys: word count over a capture of 1 M distinct words (read several
    times over, so that the run lasts), checkpointing every 500 ms, killed with SIGKILL just
    after a checkpoint commits, restarted with the same command line: the time from the restart
    to the `restored checkpoint` line (reading, checking and handing out every key group) and to
    the `ready` line (the engine runs). Repeated until a restart restores at least 1 M entities,
    then CKPT_RUNS more restarts of that checkpoint for the median.

Settings (environment): CKPT_RUNS [5], CKPT_ORDERS and CKPT_NBBO [10000000 each], CKPT_KEYS
[1000000], CKPT_WC_PASSES [6], CKPT_WC_INTERVAL [500ms], CKPT_CORES [0,1] (shards run unpinned
on these).
Writes perf/results/checkpoint-latest.md and prints it.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BIN = "target/release/bettong"
RUNS = int(os.environ.get("CKPT_RUNS", "5"))
# About 4 s a run on the development machine, so that each run takes 3 or 4 checkpoints.
ORDERS = int(os.environ.get("CKPT_ORDERS", "10000000"))
NBBO = int(os.environ.get("CKPT_NBBO", "10000000"))
KEYS = int(os.environ.get("CKPT_KEYS", "1000000"))
PASSES = int(os.environ.get("CKPT_WC_PASSES", "6"))
# Word count checkpoints this often: the first must come before the capture ends.
WC_INTERVAL = os.environ.get("CKPT_WC_INTERVAL", "500ms")
CORES = os.environ.get("CKPT_CORES", "0,1")
# Only the coordinator's debug line, so that debug logging costs nothing elsewhere.
LOG = "bettong::runtime::checkpoints=debug,info"

CHECKPOINT_LINE = re.compile(r"checkpoint (\d+): (\d+) bytes in ([0-9.]+)(ns|µs|us|ms|s)\b")
RESTORED_LINE = re.compile(r"restored checkpoint (\d+) \((\d+) state entities\)")
UNIT = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def checkpoints_in(text):
    """(id, bytes, ms) of every `checkpoint N: B bytes in D` line."""
    return [
        (int(m[1]), int(m[2]), float(m[3]) * UNIT[m[4]]) for m in CHECKPOINT_LINE.finditer(text)
    ]


def summary_count(text, label):
    m = re.search(label + r" (\d+)", text)
    if not m:
        sys.exit(f"no `{label}` in the summary:\n{text}")
    return int(m[1])


def engine(app, inputs, out, chk=None, interval="1s"):
    cmd = [BIN, app, "--in", inputs, "--out", "file:" + out, "--cores", CORES, "--no-pin",
           "--metrics-interval", "0"]
    if chk:
        cmd += ["--resilience-dir", chk, "--time-between-checkpoints", interval]
    return cmd


def remove_outputs(out):
    d = os.path.dirname(out)
    for f in os.listdir(d):
        if f.startswith(os.path.basename(out)):
            os.remove(os.path.join(d, f))


def market_spread(work):
    data = os.path.join(work, "ms")
    subprocess.run([BIN, "gen", "market-spread", "--out", data, "--orders", str(ORDERS),
                    "--nbbo", str(NBBO)], check=True, stdout=subprocess.DEVNULL)
    # The initial NBBO first, then the updates, as one capture.
    nbbo = os.path.join(data, "nbbo-all.msg")
    with open(nbbo, "wb") as f:
        for part in ("initial-nbbo.msg", "nbbo.msg"):
            with open(os.path.join(data, part), "rb") as p:
                shutil.copyfileobj(p, f)
    inputs = f"Orders@file:{data}/orders.msg,Nbbo@file:{nbbo}"
    out = os.path.join(work, "ms-out.bin")
    chk = os.path.join(work, "ms-chk")
    rates = {False: [], True: []}
    checkpoints = []
    for r in range(RUNS):
        for with_chk in ((False, True) if r % 2 == 0 else (True, False)):
            remove_outputs(out)
            shutil.rmtree(chk, ignore_errors=True)
            cmd = engine("market-spread", inputs, out, chk if with_chk else None)
            start = time.monotonic()
            p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, RUST_LOG=LOG))
            took = time.monotonic() - start
            if p.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr}")
            msgs = summary_count(p.stderr, "messages in")
            rates[with_chk].append(msgs / took)
            if with_chk:
                checkpoints += checkpoints_in(p.stderr)
            print(f"  market spread {'with' if with_chk else 'without'} checkpoints: "
                  f"{msgs} msgs in {took:.2f} s = {msgs / took / 1e6:.2f} M msgs/s", flush=True)
    # The state entities of the last run's last checkpoint: what a restart restores.
    p = subprocess.run(engine("market-spread", inputs, out, chk), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    m = RESTORED_LINE.search(p.stderr)
    entities = int(m[2]) if m else 0
    return rates, checkpoints, entities, " ".join(engine("market-spread", inputs, out, chk))


class Engine:
    """A `bettong` process whose stderr and stdout lines are watched with their arrival times."""

    def __init__(self, cmd):
        self.started = time.monotonic()
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, RUST_LOG=LOG))
        self.lines = []
        self.cond = threading.Condition()
        self.readers = [threading.Thread(target=self._read, args=(s,), daemon=True)
                        for s in (self.p.stdout, self.p.stderr)]
        for t in self.readers:
            t.start()

    def _read(self, stream):
        for line in stream:
            with self.cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self.cond.notify_all()

    def wait_for(self, pattern, timeout=600):
        """(seconds since the start, match) of the first line matching `pattern`."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for at, line in self.lines[seen:]:
                    m = re.search(pattern, line)
                    if m:
                        return at - self.started, m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and all(
                        not t.is_alive() for t in self.readers)):
                    sys.exit(f"no line matching {pattern!r}:\n" +
                             "\n".join(l for _, l in self.lines[-20:]))
                self.cond.wait(min(left, 0.05))

    def kill(self):
        self.p.kill()
        self.p.wait()
        for t in self.readers:
            t.join()

    def text(self):
        return "\n".join(l for _, l in self.lines)


def newest_complete(chk):
    ids = [int(d[4:]) for d in os.listdir(chk) if d.startswith("chk-")
           and os.path.isfile(os.path.join(chk, d, "MANIFEST"))] if os.path.isdir(chk) else []
    return max(ids, default=0)


def recovery(work):
    capture = os.path.join(work, "words.frames")
    with open(capture, "wb") as f:
        for _ in range(PASSES):
            for first in range(0, KEYS, 100):
                line = " ".join(f"k{i:07d}" for i in range(first, min(first + 100, KEYS)))
                payload = line.encode()
                f.write(len(payload).to_bytes(4, "big") + payload)
    out = os.path.join(work, "wc-out.txt")
    chk = os.path.join(work, "wc-chk")
    cmd = engine("word-count", f"Text@file:{capture}", out, chk, WC_INTERVAL)
    checkpoints = []
    times = []  # (to restored line, to ready line, entities)
    e = Engine(cmd)
    # Kill just after a checkpoint commits, restart, until a restart restores every key.
    while True:
        before = newest_complete(chk)
        while newest_complete(chk) <= before:
            if e.p.poll() is not None:
                sys.exit("word count ended before a checkpoint held every key: raise "
                         "CKPT_WC_PASSES\n" + e.text())
            time.sleep(0.005)
        e.kill()
        checkpoints += checkpoints_in(e.text())
        e = Engine(cmd)
        restored_s, m = e.wait_for(RESTORED_LINE.pattern)
        ready_s, _ = e.wait_for(r"^ready")
        entities = int(m[2])
        print(f"  word count restart: checkpoint {m[1]}, {entities} entities, restored in "
              f"{restored_s * 1e3:.0f} ms, ready in {ready_s * 1e3:.0f} ms", flush=True)
        if entities >= KEYS:
            times.append((restored_s, ready_s, entities))
            break
    # More restarts of the same checkpoint: killed as soon as they are ready, before the next
    # checkpoint (500 ms away) can commit.
    for _ in range(RUNS - 1):
        e.kill()
        e = Engine(cmd)
        restored_s, m = e.wait_for(RESTORED_LINE.pattern)
        ready_s, _ = e.wait_for(r"^ready")
        times.append((restored_s, ready_s, int(m[2])))
        print(f"  word count restart: checkpoint {m[1]}, {m[2]} entities, restored in "
              f"{restored_s * 1e3:.0f} ms, ready in {ready_s * 1e3:.0f} ms", flush=True)
    # The last restart runs to the end of the capture: every checkpoint it takes holds every
    # key (a killed run's last debug lines may be lost with it).
    e.p.wait()
    for t in e.readers:
        t.join()
    checkpoints += checkpoints_in(e.text())
    return times, checkpoints, " ".join(cmd)


def fmt_rate(v):
    return f"{v / 1e6:.2f} M"


def main():
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    work = tempfile.mkdtemp(prefix="bettong-ckpt-")
    try:
        print(f"(a, b) Market Spread, {ORDERS} orders + {NBBO} NBBO, {RUNS} alternating runs",
              flush=True)
        rates, ms_chk, ms_entities, ms_cmd = market_spread(work)
        print(f"(b, c) word count over {KEYS} distinct words", flush=True)
        times, wc_chk, wc_cmd = recovery(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    without, with_ = statistics.median(rates[False]), statistics.median(rates[True])
    lines = [
        "# Checkpoint cost (`bash perf/checkpoint.sh`)",
        "",
        f"Commit {commit}, {os.cpu_count()} CPUs, shards on cores {CORES} unpinned, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"## (a) Market Spread throughput, file sources → file sink, {RUNS} alternating runs",
        "",
        f"`{ms_cmd}` with and without `--resilience-dir DIR --time-between-checkpoints 1s` "
        f"({ORDERS} orders, {NBBO} NBBO updates after the initial NBBO).",
        "",
        "| run | median msgs/s (min–max) | ratio |",
        "|---|---|---|",
        f"| without checkpoints | {fmt_rate(without)} ({fmt_rate(min(rates[False]))}–"
        f"{fmt_rate(max(rates[False]))}) | 1.00 |",
        f"| checkpoint every 1 s ({len(ms_chk) / RUNS:.1f} a run) | {fmt_rate(with_)} "
        f"({fmt_rate(min(rates[True]))}–{fmt_rate(max(rates[True]))}) | "
        f"{with_ / without:.2f} |",
        "",
        "## (b) Checkpoint duration and size per state entity",
        "",
        "From the engine's `checkpoint N: B bytes in D` debug line (start to committed manifest).",
        "",
        "| app | state entities | checkpoints | median bytes | bytes per entity | median "
        "duration (min–max) |",
        "|---|---|---|---|---|---|",
    ]
    for app, chks, entities in (("market spread", ms_chk, ms_entities),
                                ("word count", [c for c in wc_chk if c[1] > 0], KEYS)):
        if not chks:
            lines.append(f"| {app} | {entities} | 0 | – | – | – |")
            continue
        if app == "word count":
            # Only the checkpoints that held every key (the largest ones).
            top = max(c[1] for c in chks)
            chks = [c for c in chks if c[1] >= 0.98 * top]
        size = statistics.median(c[1] for c in chks)
        ms = [c[2] for c in chks]
        lines.append(
            f"| {app} | {entities} | {len(chks)} | {size / 1e6:.3f} MB | "
            f"{size / max(entities, 1):.1f} | {statistics.median(ms):.1f} ms "
            f"({min(ms):.1f}–{max(ms):.1f}) |")
    restored = [t[0] * 1e3 for t in times]
    ready = [t[1] * 1e3 for t in times]
    lines += [
        "",
        f"## (c) Recovery of {times[0][2]} keys (word count, killed after a checkpoint)",
        "",
        f"`{wc_cmd}`, SIGKILL just after a checkpoint commits, the same command again: "
        "time from starting the process to its `restored checkpoint` line, and to `ready`.",
        "",
        "| restarts | to `restored checkpoint` median (min–max) | to `ready` median (min–max) |",
        "|---|---|---|",
        f"| {len(times)} | {statistics.median(restored):.0f} ms ({min(restored):.0f}–"
        f"{max(restored):.0f}) | {statistics.median(ready):.0f} ms ({min(ready):.0f}–"
        f"{max(ready):.0f}) |",
        "",
    ]
    # The commands as run, with the scratch directory's name shortened.
    text = "\n".join(lines).replace(work, "$WORK")
    os.makedirs("perf/results", exist_ok=True)
    with open("perf/results/checkpoint-latest.md", "w") as f:
        f.write(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
