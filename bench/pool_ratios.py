#!/usr/bin/env python3
"""Pool the per-round ``batch_limited`` / ``batch`` ratios of several ``bench/throughput.py``
reports: the median over all their rounds and a 95 % bootstrap interval of it.

    PYTHONPATH=. .venv/bin/python bench/pool_ratios.py \\
        bench/results/throughput-limited-quiet-15.md bench/results/throughput-limited-quiet-30.md
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

from bench.figures import median_interval


def ratios(report: Path, label: str) -> list[float]:
    found = re.search(r"`batch_limited` / `batch`, " + label + r" rates per round: ([0-9., ]+) \(",
                      report.read_text())
    if found is None:
        raise SystemExit(f"{report}: no {label} ratios per round")
    return [float(x) for x in found.group(1).split(",")]


def main() -> None:
    reports = [Path(p) for p in sys.argv[1:]]
    for label in ("whole-run", "steady"):
        pooled = [r for report in reports for r in ratios(report, label)]
        median, low, high = median_interval(pooled)
        print(f"{label}: {len(pooled)} rounds, median {median:.3f} (95 % interval "
              f"{low:.3f}-{high:.3f}), mean {statistics.mean(pooled):.3f}")


if __name__ == "__main__":
    main()
