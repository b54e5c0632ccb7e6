#!/usr/bin/env python3
"""The per-round lines and their summary, for perf/rounds.sh and perf/shard_cost.sh.

    rounds_report.py line JSON ROUND LABEL    one run's report as "ROUND LABEL M_msgs/s CPU_ns"
    rounds_report.py summary FILE A,B ...     each label's median, and the median of the
                                              per-round ratios A / B (msgs/s) with the number
                                              of rounds in which it was above 1

Lines of FILE that do not start with a digit (the header) are skipped. A ratio is taken only
within a round, and only over the rounds in which both of its labels ran: this VM's speed
swings by a third between runs, and a ratio within one round cancels most of that.
"""
import collections
import json
import statistics
import sys


def line(report, round_, label):
    d = json.loads(report)
    print(round_, label, round(d["msgs_per_sec"] / 1e6, 2), d["cpu_ns_per_msg"])


def summary(path, pairs):
    rows = [l.split() for l in open(path) if l[:1].isdigit()]
    by_round = collections.defaultdict(dict)
    for r, label, m, c in rows:
        by_round[int(r)][label] = (float(m), float(c))
    print(f"\n{path}")
    for label in dict.fromkeys(label for r in by_round.values() for label in r):
        ms = [r[label][0] for r in by_round.values() if label in r]
        cs = [r[label][1] for r in by_round.values() if label in r]
        print(f"  {label:24s} median {statistics.median(ms):6.2f} M msgs/s "
              f"({min(ms):.1f}-{max(ms):.1f}), CPU {statistics.median(cs):5.1f} ns/msg")
    print("  per-round ratios (msgs/s), median (rounds above 1):")
    for pair in pairs:
        a, b = pair.split(",")
        rs = [r[a][0] / r[b][0] for r in by_round.values() if a in r and b in r]
        if rs:
            print(f"  {a} / {b}: {statistics.median(rs):.2f}x "
                  f"({sum(x > 1 for x in rs)} of {len(rs)})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["line"] and len(sys.argv) == 5:
        line(*sys.argv[2:])
    elif sys.argv[1:2] == ["summary"] and len(sys.argv) >= 3:
        summary(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
