#!/usr/bin/env python3
"""Shares of a py-spy profile (``--format raw``: one collapsed stack and its samples a line).

Run: ``python bench/pyspy_share.py PROFILE...``. For each profile: all samples; the main
thread's outside imports (the event loop's work: Faust's consumer thread and module loading
left out); of those, the stacks through the distributed limiter's runtime (``tables/``, the
wire records) and through the batch runner's gates or the lease (the unlimited way has gates
too). Used for the never-binding limiter (docs/benchmarks.md), profiling one bench child with
``py-spy record -r 250 --format raw -o OUT -- python bench/throughput.py --way WAY ...``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

GROUPS = {
    "limiter runtime": re.compile(r"faust_backpressure/tables/|faust_backpressure/wire/limiter"),
    "gates or lease": re.compile(r"faust_backpressure/tables/lease\.py|_gates \("),
}


def shares(path: Path) -> dict[str, int]:
    counts = {"all": 0, "main thread, no imports": 0, **dict.fromkeys(GROUPS, 0)}
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        n = int(samples)
        counts["all"] += n
        if "Thread._bootstrap" in stack or "_find_and_load" in stack:
            continue
        counts["main thread, no imports"] += n
        for name, pattern in GROUPS.items():
            if pattern.search(stack):
                counts[name] += n
    return counts


def main() -> None:
    paths = [Path(arg) for arg in sys.argv[1:]]
    rows = {path.name: shares(path) for path in paths}
    names = list(next(iter(rows.values())))
    print("| profile | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for name, counts in rows.items():
        main_samples = max(1, counts["main thread, no imports"])
        cells = [f"{counts[k]}" if k in ("all", "main thread, no imports")
                 else f"{counts[k]} ({100 * counts[k] / main_samples:.1f} %)" for k in names]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
