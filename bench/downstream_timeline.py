#!/usr/bin/env python3
"""What happened around an outage's end in one run of ``bench/downstream.py``: the workers'
per-call logs (``FBP_CALL_LOG``) and guard states, in bins, from the service's recovery.

    PYTHONPATH=. .venv/bin/python bench/downstream_timeline.py \\
        /tmp/fbp-bench-downstream/r1-outage-guard [--bin 0.1] [--before 1] [--after 8]

Per bin (seconds from the service's recovery, by the time each call was sent): per worker the
calls sent and their answers (``ok/429/503``), then its guard's last state in the bin (breaker,
concurrency limit, in flight, queued, lease share/level); and the total sent per second. Also
the breaker transitions from the worker logs and the first whole second at >= 90% of Q.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[(\d+)\] \[\w+\] (.*)$",
                  re.MULTILINE)
NOTEWORTHY = ("breaker api", "slowed down", "shared rate", "probing now", "announced")


def recovery_time(meta: dict) -> float:
    """Wall clock of the service's recovery (the end of the failure)."""
    ends = [at for at, change in meta["applied"] if change.get("fail") is False]
    return float(meta["began"] + ends[0])


def read_calls(folder: Path) -> dict[str, list[list[str]]]:
    return {path.stem.removeprefix("calls-"): [line.split(",") for line in
                                               path.read_text().splitlines() if line]
            for path in sorted(folder.glob("calls-*.csv"))}


def events(folder: Path, t0: float, before: float, after: float) -> list[str]:
    """Noteworthy worker log lines within the window, by time."""
    out = []
    for log in sorted(folder.glob("w*.log")):
        for m in LINE.finditer(log.read_text()):
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if -before <= stamp - t0 <= after and any(k in m.group(3) for k in NOTEWORTHY):
                out.append(f"{stamp - t0:+7.3f} {log.stem}[{m.group(2)}] {m.group(3)}")
    return sorted(out, key=lambda line: float(line.split()[0]))


def table(calls: dict[str, list[list[str]]], t0: float, width: float, before: float,
          after: float) -> list[str]:
    bins = range(math.floor(-before / width), math.ceil(after / width))
    sent: dict[str, dict[int, dict[str, int]]] = {w: defaultdict(lambda: defaultdict(int))
                                                   for w in calls}
    state: dict[str, dict[int, list[str]]] = {w: {} for w in calls}
    for worker, lines in calls.items():
        for row in lines:
            k = math.floor((float(row[1]) - t0) / width)
            if row[0] == "c":
                sent[worker][k][{"200": "ok", "429": "429"}.get(row[3], "503")] += 1
            elif row[0] == "s":
                state[worker][k] = row[2:]
    out = []
    for k in bins:
        cells = []
        total = 0
        for worker in calls:
            c = sent[worker][k]
            total += sum(c.values())
            st = state[worker].get(k)
            brief = ("" if st is None else
                     f" {st[0][:4]} L{st[1]} f{st[2]} q{st[3]} sh{st[5]} lv{st[6]} ex{st[7]}")
            cells.append(f"{c['ok']:3d}/{c['429']}/{c['503']}{brief:38s}")
        out.append(f"{k * width:+6.2f} {total / width:6.0f}/s | " + " | ".join(cells))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--bin", type=float, default=0.1)
    parser.add_argument("--before", type=float, default=1.0)
    parser.add_argument("--after", type=float, default=8.0)
    args = parser.parse_args(argv)
    meta = json.loads((args.folder / "run.json").read_text())
    t0 = recovery_time(meta)
    print(f"{args.folder}: recovery at {t0 - meta['began']:.2f} s from the start")
    print("\n".join(events(args.folder, t0, args.before, args.after)))
    print("bin, sent/s | per worker: ok/429/503 sent in the bin, state at its end")
    print("\n".join(table(read_calls(args.folder), t0, args.bin, args.before, args.after)))
    start = meta["began"]
    for entry in meta["timeline"]:
        second = entry["second"]
        if -args.before <= start + second - t0 <= args.after:
            print(f"service second {start + second - t0:+6.2f}: ok {entry['ok']} "
                  f"429 {entry['429']} 503 {entry['503']} p99 {entry['p99_ms']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
