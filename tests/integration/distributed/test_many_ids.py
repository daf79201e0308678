"""Real broker, 3 real `faust worker` processes, many distributed limiter ids at once.

Each worker calls ``try_acquire`` on every one of N ids (50/s, burst 50 each) every 10 ms, so
the owner gets thousands of lease requests a second. It must keep up: admitted stays at the
rate (>= 95% of N x 50/s over the steady window) instead of collapsing (issue 13). Speed itself
is measured in ``bench/many_ids.py``; this only checks that admission does not fall.

The 95 % holds while answers come within a renewal's margin (a quarter of the lease). Beside
the rest of the suite on 2 cores, the broker and the owners sometimes answer in 0.4-0.9 s for
~10 s (the owners' request delay, reported by the workers, goes from ~0.03 s to ~0.9 s) and a
window then measured 91-94 % (2 of ~20 runs beside a suite); the leases lengthen and admission
recovers. Such a window (an owner delay above the margin) is measured again, up to twice; a
window under 95 % with answers in time fails at once, and the bound is checked in every window.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pytest

from faust_backpressure.testing.workers import wait_until_settled
from tests.integration.distributed.conftest import Cluster

pytestmark = pytest.mark.kafka

APP = "tests.integration.distributed.apps.many_ids"
# 100 ids: 5,000 permits/s allowed, ~300 lease requests/s for the owner. FBP_TEST_MANY_IDS=1000
# runs the size (as bench/many_ids.py does).
IDS = int(os.environ.get("FBP_TEST_MANY_IDS", "100"))
RATE, BURST = 50, 50
RUN, WINDOW = 30.0, 20.0  # seconds of load; the last WINDOW of them are measured
LEASE_TTL = 1.0  # shorter than the default (2 s): twice the renewals for the owners
# docs/distributed.md, owner item 8: a renewal is sent with at least a quarter of the lease
# left; answers slower than that cost admission until the leases lengthen.
MARGIN = 0.25 * LEASE_TTL
WINDOWS = 3  # the first, and up to two more if the machine slowed the owners' answers


def per_second(reports: list[dict[str, Any]], field: str = "counts") -> dict[int, int]:
    totals: dict[int, int] = {}
    for report in reports:
        for sec, n in report.get(field, {}).items():
            totals[int(sec)] = totals.get(int(sec), 0) + n
    return totals


def worst(reports: list[dict[str, Any]], field: str) -> dict[int, float]:
    """Per second, the highest of the workers' values of ``field``."""
    highest: dict[int, float] = {}
    for report in reports:
        for sec, value in report.get(field, {}).items():
            highest[int(sec)] = max(highest.get(int(sec), 0.0), value)
    return highest


@dataclass
class Window:
    start: int
    admitted: int
    allowed: int
    owner_delay: float  # the longest any owner's requests waited (OwnerLoad.delay), s

    @property
    def share(self) -> float:
        return self.admitted / self.allowed


def measure(reports: list[dict[str, Any]], lo: int, start: float) -> Window:
    hi = lo + int(WINDOW)
    seconds = per_second(reports)
    passes = per_second(reports, "passes")
    gaps, delays = worst(reports, "gaps"), worst(reports, "owner_delay")
    admitted = sum(n for sec, n in seconds.items() if lo <= sec < hi)
    window = Window(lo, admitted, IDS * RATE * (hi - lo),
                    max((delays.get(sec, 0.0) for sec in range(lo, hi)), default=0.0))
    span = range(int(start), hi)
    print(f"window from {lo - int(start)} s: admitted {admitted} of {window.allowed} allowed "
          f"({window.share:.1%}), owners' request delay up to {window.owner_delay:.3f} s; "
          f"per second: {[seconds.get(sec, 0) for sec in span]}; passes per second (3 workers): "
          f"{[passes.get(sec, 0) for sec in span]}; longest gap between passes: "
          f"{[gaps.get(sec, 0.0) for sec in span]}; owners' request delay: "
          f"{[delays.get(sec, 0.0) for sec in span]}")
    return window


async def test_many_ids_on_3_workers_keep_admitting_at_the_rate(cluster: Cluster) -> None:
    env = {**cluster.env, "FBP_IDS": str(IDS), "FBP_RATE": str(RATE), "FBP_BURST": str(BURST),
           "FBP_LEASE_TTL": str(LEASE_TTL)}
    for name in ("w0", "w1", "w2"):
        cluster.workers.append(cluster.start_worker(APP, name=name, env=env))
    for worker in cluster.workers:
        worker.wait_ready(90)
    wait_until_settled(cluster.workers, 90)
    start = cluster.go()
    windows: list[Window] = []
    for attempt in range(WINDOWS):
        end = start + RUN + attempt * WINDOW

        def done(reports: list[dict[str, Any]], end: float = end) -> bool:
            last: dict[str, float] = {}
            for r in reports:
                last[r["worker"]] = max(last.get(r["worker"], 0.0), r["at"])
            return len(last) == 3 and min(last.values()) > end + 1.5

        reports = await cluster.reports(done, timeout=RUN + WINDOW + 60)
        window = measure(reports, int(end - WINDOW), start)
        windows.append(window)
        # The bound holds in every window, summed over the ids.
        assert window.admitted <= IDS * (RATE * WINDOW + BURST), window
        if window.share >= 0.95 or window.owner_delay <= MARGIN:
            break
    for name in ("w0", "w1", "w2"):
        print(name, "median answer time per report:",
              [round(r["rtt_median"] or 0.0, 3) for r in reports if r["worker"] == name])
    for report in reports[-3:]:
        print(json.dumps({k: v for k, v in report.items() if k not in ("counts", "passes",
                                                                            "gaps")}))
    # Issue 13's target. (Before the fix in ledger.py, late renewals got newcomers' short
    # leases for ever and this measured 86-92 %.) A window in which the owners' requests
    # waited longer than a renewal's least margin was measured again (see the docstring).
    assert windows[-1].share >= 0.95, windows
