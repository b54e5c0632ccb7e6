#!/usr/bin/env python3
"""Aggregates the raw runs of perf/run.sh: medians with min and max per benchmark, throughput
ratios against the relay baseline of the same invocation, and the markdown table.

    python3 perf/aggregate.py RUNS.jsonl OUT.json OUT.md --timestamp T --nproc N --cpu MODEL \
        --kernel K --commit C --settings "k=v ..."

RUNS.jsonl holds one object per run: id, rep, ok, command, wall_s, and report (the JSON object
`bettong bench --json` writes) or log_tail for a failed run.
"""

import argparse
import json
import statistics

PERCENTILES = [("p50", "p50"), ("p99", "p99"), ("p99_9", "p99.9"), ("p99_99", "p99.99")]


def fmt_rate(v):
    return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v / 1e3:.1f}k"


def fmt_ns(ns):
    if ns == 0:
        return "–"
    if ns < 10_000:
        return f"{ns:.0f}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f}µs"
    if ns < 10_000_000_000:
        return f"{ns / 1e6:.2f}ms"
    return f"{ns / 1e9:.2f}s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("out_json")
    ap.add_argument("out_md")
    for flag in ["timestamp", "nproc", "cpu", "kernel", "commit", "settings"]:
        ap.add_argument("--" + flag, default="unknown")
    a = ap.parse_args()

    runs = [json.loads(line) for line in open(a.runs) if line.strip()]
    order = []
    by_id = {}
    for r in runs:
        if r["id"] not in by_id:
            order.append(r["id"])
            by_id[r["id"]] = []
        by_id[r["id"]].append(r)
    # First seen is the harness's own order: its first round starts at the first benchmark.

    results = []
    for id_ in order:
        ok = [r for r in by_id[id_] if r["ok"]]
        res = {
            "id": id_,
            "runs": len(by_id[id_]),
            "runs_ok": len(ok),
            "command": by_id[id_][0]["command"],
        }
        if ok:
            rates = [r["report"]["msgs_per_sec"] for r in ok]
            rep = ok[0]["report"]
            res.update(
                app=rep["app"],
                shards=rep["shards"],
                rate=rep.get("rate"),
                msgs_per_sec={
                    "median": statistics.median(rates),
                    "min": min(rates),
                    "max": max(rates),
                },
                # Each percentile's median over the runs.
                latency_ns={
                    k: statistics.median(r["report"]["latency_ns"][k] for r in ok)
                    for k in ["p50", "p99", "p99_9", "p99_99", "max"]
                },
            )
        results.append(res)

    relay = next((r for r in results if r["id"] == "relay" and r["runs_ok"]), None)
    base = relay["msgs_per_sec"]["median"] if relay else None
    for r in results:
        # A paced run's rate is what it was offered, not what it can do: no ratio for it.
        if r["runs_ok"] and base and not r.get("rate"):
            r["ratio_to_relay"] = r["msgs_per_sec"]["median"] / base

    machine = {
        "nproc": int(a.nproc) if a.nproc.isdigit() else a.nproc,
        "cpu": a.cpu,
        "kernel": a.kernel,
        "commit": a.commit,
    }
    settings = dict(kv.split("=", 1) for kv in a.settings.split() if "=" in kv)
    with open(a.out_json, "w") as f:
        json.dump(
            {
                "timestamp": a.timestamp,
                "machine": machine,
                "settings": settings,
                "results": results,
                "runs": runs,
            },
            f,
            indent=1,
        )
        f.write("\n")

    md = []
    md.append(f"# bettong perf — {a.timestamp}\n")
    md.append(
        f"Machine: {a.nproc} cores, {a.cpu}, kernel {a.kernel}; commit {a.commit}.  \n"
        f"Settings: {a.settings}.  \n"
        "Each figure is the median of the runs with (min–max); the ratio is the median over the "
        "relay baseline's median from the same invocation. Blast rows: input msgs/s with the "
        "senders blasting. Latency rows: the achieved input rate at the offered `--rate`. "
        "Latency: the engine's start-to-end percentiles (median of each over the runs); the "
        "relay has no engine clock (–). conns: sender connections per input stream "
        "(market-spread has two streams, orders and NBBO).\n"
    )
    md.append(
        "| benchmark | shards | poll | conns | runs | median msgs/s (min–max) | ratio to relay "
        "| p50 | p99 | p99.9 | p99.99 |"
    )
    md.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cmd = r["command"].split()
        app = cmd[2] if len(cmd) > 2 else r["id"]
        poll = cmd[cmd.index("--poll") + 1] if "--poll" in cmd else ""
        conns = cmd[cmd.index("--connections") + 1] if "--connections" in cmd else "default"
        shards = cmd[cmd.index("--shards") + 1] if "--shards" in cmd else "–"
        if app == "relay":
            shards, poll, conns = "–", "–", "1"
        elif conns == "default":
            conns = str(shards) if app == "passthrough" else "1"
        name = app
        if r.get("rate"):
            name = f"{app} latency @ {fmt_rate(r['rate'])}/s"
        if not r["runs_ok"]:
            timed_out = [x for x in by_id[r["id"]] if "timed_out_s" in x]
            if timed_out:
                t = timed_out[0]
                cell = (
                    f"< {fmt_rate(t['messages'] / t['timed_out_s'])} "
                    f"(timed out at {t['timed_out_s']} s)"
                )
            else:
                cell = "FAILED"
            md.append(
                f"| {name} | {shards} | {poll} | {conns} | 0/{r['runs']} | {cell} | | | | | |"
            )
            continue
        m = r["msgs_per_sec"]
        ratio = f"{r['ratio_to_relay']:.2f}" if "ratio_to_relay" in r else "n/a"
        lat = " | ".join(fmt_ns(r["latency_ns"][k]) for k, _ in PERCENTILES)
        md.append(
            f"| {name} | {shards} | {poll} | {conns} | {r['runs_ok']}/{r['runs']} "
            f"| {fmt_rate(m['median'])} ({fmt_rate(m['min'])}–{fmt_rate(m['max'])}) "
            f"| {ratio} | {lat} |"
        )
    with open(a.out_md, "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
