#!/usr/bin/env python3
"""Aggregates the raw runs of perf/peer.sh: medians (with min and max) per variant, the ratio
table (to the hand-written loop, and bettong/timely at the same worker count and transport), the
open-loop latency table, and the markdown page.

    python3 perf/peer_report.py RUNS.jsonl OUT.json OUT.md --timestamp T --nproc N --cpu MODEL \
        --kernel K --commit C --timely VERSION --command "the invocation"

RUNS.jsonl holds one object per run: id, rep, ok, command, and report (the JSON object
`bettong-peer run --json` writes) or log_tail for a failed run.
"""

import argparse
import json
import statistics

NAMES = {
    "loop": "hand-written loop (1 thread, no engine)",
    "loop-local": "hand-written loop, one pinned thread per worker, each over the messages it owns",
    "timely": "timely in-process",
    "timely-busy": "timely in-process, the other core busy (a spinning thread)",
    "bettong": "bettong in-process",
    "bettong-batch": "bettong in-process, push_batch of 1024",
    "bettong-iter": "bettong in-process, IterSource (each shard pulls its share)",
    "bettong-iter-4096": "the same, --ring-capacity 4096 (the default before)",
    "timely-local": "timely in-process, each worker fed only the messages it owns",
    "bettong-iter-local": "bettong IterSource, each shard fed only the messages it owns",
    "bettong-iter-engines": "bettong IterSource, one 1-shard engine per core, each fed only its own keys",
    "bettong-spin": "bettong in-process, --poll spin",
    "timely-tcp": "timely over TCP",
    "bettong-tcp": "bettong over TCP",
}


def fmt_rate(v):
    return f"{v / 1e6:.2f}M"


def fmt_ns(ns):
    if ns < 10_000:
        return f"{ns / 1e3:.1f}µs" if ns >= 1000 else f"{ns:.0f}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.0f}µs"
    return f"{ns / 1e6:.2f}ms"


def med(xs):
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("out_json")
    ap.add_argument("out_md")
    for flag in ["timestamp", "nproc", "cpu", "kernel", "commit", "timely", "command"]:
        ap.add_argument("--" + flag, default="unknown")
    a = ap.parse_args()

    runs = [json.loads(line) for line in open(a.runs) if line.strip()]
    order, by_id = [], {}
    for r in runs:
        if r["id"] not in by_id:
            order.append(r["id"])
            by_id[r["id"]] = []
        by_id[r["id"]].append(r)
    rank = {"loop": 0, "loop-local": 0.5, "timely": 1, "timely-busy": 1, "bettong-iter": 2, "bettong-iter-4096": 3, "bettong": 4,
            "bettong-batch": 5, "bettong-spin": 6, "timely-local": 6.1, "bettong-iter-local": 6.2, "bettong-iter-engines": 6.3,
            "timely-tcp": 7, "bettong-tcp": 8}

    def key(i):
        parts = i.split("/")
        lat = parts[0] == "latency"
        v = parts[1] if lat else parts[0]
        return (lat, "tcp" in v, int(parts[-1]), rank.get(v, 9))
    order.sort(key=key)

    results = {}
    for id_ in order:
        ok = [r["report"] for r in by_id[id_] if r["ok"]]
        res = {"id": id_, "runs": len(by_id[id_]), "runs_ok": len(ok),
               "command": by_id[id_][0]["command"]}
        if ok:
            rates = [r["msgs_per_sec"] for r in ok]
            cpu = [r["cpu_ns_per_msg"] for r in ok]
            res.update({
                "variant": ok[0]["variant"], "workers": ok[0]["workers"],
                "messages": ok[0]["messages"], "outputs": ok[0]["outputs"],
                "msgs_per_sec": {"median": med(rates), "min": min(rates), "max": max(rates)},
                "cpu_ns_per_msg": {"median": med(cpu), "min": min(cpu), "max": max(cpu)},
            })
            lat = [r["latency_ns"] for r in ok if r.get("latency_ns")]
            if lat:
                res["latency_ns"] = {k: med([l[k] for l in lat]) for k in ["p50", "p99", "p99_9", "max"]}
                res["latency_samples"] = lat[0]["samples"]
                res["rate"] = ok[0]["rate"]
        results[id_] = res

    loop = results.get("loop/1", {})
    loop_rate = loop.get("msgs_per_sec", {}).get("median")
    loop_cpu = loop.get("cpu_ns_per_msg", {}).get("median")
    rows, ratios = [], []
    for id_ in order:
        r = results[id_]
        if id_.startswith("latency") or "msgs_per_sec" not in r:
            continue
        rate, cpu = r["msgs_per_sec"]["median"], r["cpu_ns_per_msg"]["median"]
        to_loop_rate = rate / loop_rate if loop_rate else None
        to_loop_cpu = cpu / loop_cpu if loop_cpu else None
        r["ratio_to_loop"] = {"msgs_per_sec": to_loop_rate, "cpu_ns_per_msg": to_loop_cpu}
        rows.append((id_, r))
    for transport, ours, theirs in [("", "-iter", ""), ("", "", ""), ("", "-batch", ""),
                                    ("", "-iter-local", "-local"), ("-tcp", "", "")]:
        for w in sorted({r["workers"] for r in results.values() if "workers" in r}):
            b = results.get(f"bettong{transport}{ours}/{w}")
            t = results.get(f"timely{transport}{theirs}/{w}")
            if b and t and "msgs_per_sec" in b and "msgs_per_sec" in t:
                ratios.append({
                    "transport": ("TCP" if transport else "in-process")
                    + {"": "", "-batch": ", push_batch", "-iter": ", IterSource",
                       "-iter-local": ", IterSource, nothing crosses (-local)"}[ours],
                    "workers": w,
                    "msgs_per_sec": b["msgs_per_sec"]["median"] / t["msgs_per_sec"]["median"],
                    "cpu_ns_per_msg": b["cpu_ns_per_msg"]["median"] / t["cpu_ns_per_msg"]["median"],
                })

    machine = {"nproc": a.nproc, "cpu": a.cpu, "kernel": a.kernel}
    out = {"timestamp": a.timestamp, "commit": a.commit, "timely": a.timely, "command": a.command,
           "machine": machine, "results": [results[i] for i in order],
           "bettong_over_timely": ratios, "raw": runs}
    with open(a.out_json, "w") as f:
        json.dump(out, f, indent=1)

    md = []
    md.append(f"# Peer comparison: Market Spread ({a.timestamp})\n")
    md.append(f"`{a.command}` — commit {a.commit}, timely {a.timely}; machine: {a.nproc} cores "
              f"({a.cpu}), Linux {a.kernel}. Raw runs: `perf/results/peer-{a.timestamp}.json`.\n")
    md.append("Medians of the runs (min–max), runs alternating round-robin. msgs/s: timed "
              "messages over wall time until every message is processed and every output "
              "counted. CPU ns/msg: the process's user+system time (getrusage, all threads: "
              "pushers, shards or workers, and for TCP the sender and receiver too) over the "
              "same span, per message. Ratios are of medians.\n")
    md.append("| variant | workers | runs | msgs/s (min–max) | CPU ns/msg (min–max) | msgs/s ÷ loop | CPU/msg ÷ loop |")
    md.append("|---|---|---|---|---|---|---|")
    for id_, r in rows:
        m, c, rl = r["msgs_per_sec"], r["cpu_ns_per_msg"], r["ratio_to_loop"]
        md.append(f"| {NAMES.get(r['variant'], r['variant'])} | {r['workers']} | {r['runs_ok']}/{r['runs']} | "
                  f"{fmt_rate(m['median'])} ({fmt_rate(m['min'])}–{fmt_rate(m['max'])}) | "
                  f"{c['median']:.0f} ({c['min']:.0f}–{c['max']:.0f}) | "
                  f"{rl['msgs_per_sec']:.3f} | {rl['cpu_ns_per_msg']:.1f}× |")
    for id_ in order:
        r = results[id_]
        if r["runs_ok"] < r["runs"]:
            md.append(f"\n{id_}: {r['runs'] - r['runs_ok']} run(s) failed (see the JSON).")
    md.append("\n**bettong ÷ timely** (same transport, same workers/shards; msgs/s above 1 and "
              "CPU/msg below 1 favour bettong):\n")
    md.append("| transport | workers | msgs/s ratio | CPU ns/msg ratio |")
    md.append("|---|---|---|---|")
    for x in ratios:
        md.append(f"| {x['transport']} | {x['workers']} | {x['msgs_per_sec']:.2f} | {x['cpu_ns_per_msg']:.2f} |")
    crossing = []
    for name, split, own in [("timely", "timely", "timely-local"),
                             ("bettong", "bettong-iter", "bettong-iter-local")]:
        for w in sorted({r["workers"] for r in results.values() if "workers" in r}):
            a_, b_ = results.get(f"{split}/{w}", {}), results.get(f"{own}/{w}", {})
            if "cpu_ns_per_msg" in a_ and "cpu_ns_per_msg" in b_:
                x, y = a_["cpu_ns_per_msg"]["median"], b_["cpu_ns_per_msg"]["median"]
                crossing.append((name, w, y, x, x - y))
    if crossing:
        md.append("\n**What crossing costs** (CPU ns per message, medians): each worker fed the "
                  "messages it owns (nothing crosses) against the stream cut into contiguous "
                  "shares (about (W−1)/W of the messages cross to the worker that owns them):\n")
        md.append("| engine | workers | nothing crosses | shares cross | difference |")
        md.append("|---|---|---|---|---|")
        for name, w, y, x, d in crossing:
            md.append(f"| {name} | {w} | {y:.1f} | {x:.1f} | {d:+.1f} |")
        out["crossing_cpu_ns_per_msg"] = [
            {"engine": n, "workers": w, "local": y, "split": x, "difference": d}
            for n, w, y, x, d in crossing]
        with open(a.out_json, "w") as f:
            json.dump(out, f, indent=1)
    scaling = []
    for name, one, many in [("hand-written loop (loop-local)", "loop", "loop-local"),
                            ("timely", "timely", "timely"),
                            ("timely, each worker its own keys", "timely", "timely-local"),
                            ("bettong IterSource", "bettong-iter", "bettong-iter"),
                            ("bettong IterSource, each shard its own keys", "bettong-iter",
                             "bettong-iter-local"),
                            ("bettong, one 1-shard engine per core, each its own keys",
                             "bettong-iter", "bettong-iter-engines")]:
        base = results.get(f"{one}/1", {})
        for w in sorted({r["workers"] for r in results.values() if "workers" in r}):
            r = results.get(f"{many}/{w}", {})
            if w > 1 and "msgs_per_sec" in base and "msgs_per_sec" in r:
                scaling.append((name, w, r["msgs_per_sec"]["median"] / base["msgs_per_sec"]["median"],
                                r["cpu_ns_per_msg"]["median"] / base["cpu_ns_per_msg"]["median"]))
    if scaling:
        md.append("\n**Scaling** (W workers or shards ÷ 1 of the same engine on the same data, "
                  "medians of this run; msgs/s above 1: W ran faster than 1):\n")
        md.append("| what | workers | msgs/s ÷ 1 worker | CPU ns/msg ÷ 1 worker |")
        md.append("|---|---|---|---|")
        for name, w, rr, cr in scaling:
            md.append(f"| {name} | {w} | {rr:.2f} | {cr:.2f} |")
        out["scaling"] = [{"what": n, "workers": w, "msgs_per_sec": rr, "cpu_ns_per_msg": cr}
                          for n, w, rr, cr in scaling]
        with open(a.out_json, "w") as f:
            json.dump(out, f, indent=1)
    lat = [results[i] for i in order if i.startswith("latency") and "latency_ns" in results[i]]
    if lat:
        md.append(f"\n**Open-loop latency** at {lat[0]['rate']} msgs/s (message i due at "
                  f"start + i/rate, sent when due; latency = output time − due time, so queueing "
                  f"behind a late send counts), {lat[0]['latency_samples']} measured outputs per "
                  "run (5% of orders on rejected symbols), medians of the runs' percentiles. "
                  "bettong: 1 shard (`--poll park`, or `--poll spin`) + 1 pacing host thread "
                  "pinned to the other core, `CallbackSink`; "
                  "timely: 1 worker that paces, sends, flushes its input and steps; "
                  "`timely-busy`: the same with a thread spinning on another core, as bettong's "
                  "pacing host thread keeps one busy (the control for the machine's own "
                  "stalls when every core is busy).\n")
        md.append("| variant | runs | p50 | p99 | p99.9 | max |")
        md.append("|---|---|---|---|---|---|")
        for r in lat:
            l = r["latency_ns"]
            md.append(f"| {NAMES.get(r['variant'], r['variant'])} | {r['runs_ok']}/{r['runs']} | "
                      f"{fmt_ns(l['p50'])} | {fmt_ns(l['p99'])} | {fmt_ns(l['p99_9'])} | {fmt_ns(l['max'])} |")
    with open(a.out_md, "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
