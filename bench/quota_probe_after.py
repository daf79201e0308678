"""What ``quota_probe_after`` trades, on a virtual clock (deterministic: one run per value).

The simulated service of ``tests/unit/limiters/test_quota.py``: it serves at most ``quota``
calls a second, and a second over it is a slow-down with a 1 s pause. For each
``probe_after``: the share of a steady quota served (seconds 30-330), the slow-downs per
minute there (each failed probe is one: 429s and a pause on every worker), and the seconds
until a doubled quota is served at >= 90 % (it doubles at 10 moments of the probing cycle).

    PYTHONPATH=. .venv/bin/python bench/quota_probe_after.py [--output FILE]
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from faust_backpressure.limiters.quota import QuotaLearner

#: When the quota doubles, after 300 s of a steady one: moments of the probing cycle.
OFFSETS = tuple(range(0, 30, 3))


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def serve(learner: QuotaLearner, clock: VirtualClock, quota: float,
          seconds: float) -> tuple[list[float], int]:
    """Served per second at the learner's rate, and the slow-downs, for ``seconds``."""
    served: list[float] = []
    slow_downs = 0
    end = clock.now + seconds
    while clock.now < end:
        rate = min(learner.rate, 10 * quota)
        over = rate > quota * 1.0001
        for _ in range(int(quota) if over else max(1, int(rate))):
            learner.started()
            learner.succeeded()
            clock.now += 1 / rate
        served.append(quota if over else rate)
        if over:
            learner.slowed_down(1.0)
            slow_downs += 1
            clock.now += 1.0
            served.append(0.0)
    return served, slow_downs


def one(probe_after: float, offset: float, quota: float = 300.0) -> dict[str, float]:
    """Settle, hold a steady quota for 300 s + ``offset``, then double it."""
    clock = VirtualClock()
    learner = QuotaLearner(clock=clock, probe_after=probe_after)
    serve(learner, clock, quota, 30)
    served, slow_downs = serve(learner, clock, quota, 300 + offset)
    doubled, _ = serve(learner, clock, 2 * quota, 300)
    follow = next((i for i, s in enumerate(doubled) if s >= 0.9 * 2 * quota), len(doubled))
    return {"steady": sum(served) / len(served) / quota,
            "slow_downs_per_min": 60 * slow_downs / len(served), "doubled_after": follow}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="bench/results/quota-probe-after.md")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    lines = ["# What `quota_probe_after` trades (virtual clock)", "",
             f"`PYTHONPATH=. .venv/bin/python bench/quota_probe_after.py`, commit {commit}; "
             "deterministic; quota 300/s, a 1 s pause per slow-down; the quota doubles at "
             f"{len(OFFSETS)} moments of the probing cycle (300 s + 0, 3, ... 27 s): "
             "medians, and the range of the follow time.", "",
             "| probe_after (s) | steady quota served | slow-downs per minute, steady | "
             "doubled quota at >= 90 % after (s) |", "|---|---|---|---|"]
    for probe_after in (30.0, 15.0, 10.0, 5.0, 2.0, 0.0):
        runs = [one(probe_after, offset) for offset in OFFSETS]
        steady = sorted(r["steady"] for r in runs)
        per_min = sorted(r["slow_downs_per_min"] for r in runs)
        after = sorted(r["doubled_after"] for r in runs)
        lines.append(f"| {probe_after:g} | {100 * steady[len(runs) // 2]:.1f} % | "
                     f"{per_min[len(runs) // 2]:.1f} | {after[len(runs) // 2]:g} "
                     f"({after[0]:g}-{after[-1]:g}) |")
    text = "\n".join(lines) + "\n"
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
