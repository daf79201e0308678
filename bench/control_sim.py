#!/usr/bin/env python3
"""Set-point vs step policy on a simulated plant (virtual clock, no broker).

Run: ``PYTHONPATH=. python bench/control_sim.py``. Prints a markdown table and writes it to
``bench/results/control_sim.md``. The plant (``faust_backpressure.testing.plant``) is issue
12's pipeline: limiter base rate 300/s, downstream 100/s, scaling threshold 1,000, max lag
2,000, interval 1 s, upstream saturated; downstream commits every 2.8 s (Faust's default) or
continuously; a third of the saturated utilization readings dip to 0.59-0.87 as seen on a
distributed limiter; the decided rate reaches the limiter at once or one interval late (``delay``:
a distributed limiter's leases and the pressure event's trip, as on the real broker). The
real-broker run of the issue scenario is ``bench/control_step.py``.

Scenarios:
* issue: A fed at 300/s for 30 s, downstream 100/s; steady = 10 s to the end of the
  upstream backlog; restore = intervals from the backlog's end to the base rate.
* capacity step: downstream 100 -> 50 (60 s) -> 100/s (120 s); steady = the last 30 s of each
  phase; restore: not applicable.
* stop / back: downstream 100/s, stopped at 60 s, back at 120 s at 400/s; steady = 30-60 s;
  restore = intervals from 120 s to the base rate.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from faust_backpressure.config import BackpressureSettings
from faust_backpressure.control.policy import (
    BackpressureController,
    BackpressureSeverity,
    BackpressureThresholds,
)
from faust_backpressure.testing.plant import Run, simulate

THRESHOLDS = BackpressureThresholds.from_settings(
    BackpressureSettings(scaling_threshold=1_000, max_consumer_lag=2_000))
BASE = 300.0


def run(policy: str, offered: Callable[[float], float], capacity: Callable[[float], float],
        duration: float, commit_interval: float, delay: float) -> Run:
    controller = BackpressureController(BASE, THRESHOLDS, policy=policy,  # type: ignore[arg-type]
                                        interval=1.0)
    return simulate(controller, offered=offered, capacity=capacity, duration=duration,
                    commit_interval=commit_interval, utilization_dips=1 / 3, delay=delay)


def restore_after(result: Run, start: float) -> str:
    back = result.between(start, 1e9).first(lambda i: i.decision.rate >= BASE)
    return "never" if back is None else f"{back.t - start:.0f}"


def row(name: str, policy: str, commit: float, delay: float, result: Run, steady: list[Run],
        restore: str) -> str:
    lows = [s.lag_band()[0] for s in steady]
    highs = [s.lag_band()[1] for s in steady]
    rates = [s.rate_band() for s in steady]
    steps = max(s.steps_per_minute() for s in steady)
    changes = max(s.rate_changes_per_minute() for s in steady)
    busy = min(s.busy_share() for s in steady)
    emergency = "yes" if BackpressureSeverity.EMERGENCY in result.severities() else "no"
    return (f"| {name} | {policy} | {commit:g} | {delay:g} | {result.peak_lag():,} | "
            f"{min(lows):,}-{max(highs):,} | {min(r[0] for r in rates):.0f}-"
            f"{max(r[1] for r in rates):.0f} | {changes:.0f} | {steps:.0f} | {busy:.1%} | "
            f"{emergency} | {restore} |")


def main() -> int:
    lines = ["| scenario | policy | commit s | delay s | peak lag | steady lag band | "
             "steady rate /s | rate changes /min | steps > 5% /min | downstream busy | "
             "emergency | restore (intervals) |", "|" + " --- |" * 12]
    for commit, delay in ((2.8, 1.0), (2.8, 0.0), (0.0, 0.0)):
        for policy in ("setpoint", "step"):
            issue = run(policy, lambda t: 300.0 if t < 30 else 0.0, lambda t: 100.0, 150,
                        commit, delay)
            end = issue.first(lambda i: i.t > 30 and i.upstream_backlog <= 0)
            end_t = end.t if end is not None else 150.0
            lines.append(row("issue (300/s for 30 s)", policy, commit, delay, issue,
                             [issue.between(10, end_t)], restore_after(issue, end_t)))
            step = run(policy, lambda t: 300.0,
                       lambda t: 100.0 if t < 60 else 50.0 if t < 120 else 100.0, 180, commit,
                       delay)
            lines.append(row("capacity 100-50-100", policy, commit, delay, step,
                             [step.between(30, 60), step.between(90, 120),
                              step.between(150, 180)], "n/a"))
            stop = run(policy, lambda t: 300.0,
                       lambda t: 100.0 if t < 60 else 0.0 if t < 120 else 400.0, 200, commit,
                       delay)
            lines.append(row("stop 60-120 s, back at 400/s", policy, commit, delay, stop,
                             [stop.between(30, 60)], restore_after(stop, 120.0)))
    table = "\n".join(lines)
    print(table)
    out = Path(__file__).resolve().parent / "results" / "control_sim.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("# Control policies on a simulated plant\n\n"
                   "`PYTHONPATH=. python bench/control_sim.py`\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
