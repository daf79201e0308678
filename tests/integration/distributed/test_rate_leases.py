"""Rate leases (issue 13) on real `faust worker` processes: even second to second, and fair
between equal workers, the one that owns the limiter's partition included."""

from __future__ import annotations

import bisect

import pytest

from tests.integration.distributed.conftest import (
    Cluster,
    admissions,
    reported_until,
    worst_window,
)

pytestmark = pytest.mark.kafka

RATE, BURST, TTL = 300.0, 300.0, 1.0
RUN = 12.0  # seconds of greedy demand from the first admission
SETTLE = 3.0  # the initial burst is spent within BURST / RATE = 1 s; then 2 s of margin
WORKERS = ("w0", "w1", "w2")


async def test_three_workers_get_equal_even_shares_including_the_owner(
        cluster: Cluster) -> None:
    cluster.env.update(FBP_LIMITERS=f"even:{RATE:g}:{BURST:g}", FBP_LEASE_TTL=f"{TTL:g}")
    cluster.start_settled(*WORKERS)
    cluster.go()
    reports = await cluster.reports(
        lambda rs: len(admissions(rs)) > 0 and all(
            reported_until(rs, w) > admissions(rs)[0] + RUN + 0.5 for w in WORKERS))
    t0 = admissions(reports, "even")[0]
    times = [t for t in admissions(reports, "even") if t < t0 + RUN]
    owners = {r["worker"] for r in reports if r.get("owns")}
    steady_from, steady_to = t0 + SETTLE, t0 + RUN
    steady = [t for t in times if steady_from <= t < steady_to]
    shares = {w: len([t for t in admissions(reports, "even", w)
                      if steady_from <= t < steady_to]) for w in WORKERS}
    worst = max((bisect.bisect_right(steady, t + 1.0) - i
                 for i, t in enumerate(steady) if t + 1.0 <= steady_to), default=0)
    span = steady_to - steady_from
    print(f"owner {sorted(owners)}; steady shares {shares}; admitted {len(steady)} of "
          f"{RATE * span:.0f}; worst steady 1 s window {worst} ({worst / RATE:.3f} x rate)")
    assert owners, "no worker reported owning the limiter"
    # The bound of the shared bucket, r t + b, holds over every window of the whole run.
    for window in (0.1, 1.0, 3.0, RUN):
        assert worst_window(times, window) <= RATE * window + BURST, window
    # Even and fair, looser here than the targets (1.05 x rate in any 1 s window, shares within
    # 10 %), which bench/evenness.py measures on a machine running nothing else (1.02-1.03 x;
    # 0.3 %). Here the test runs beside other tests' workers on 2 cores (make test's test
    # workers): a worker descheduled past its renewal gets its grant late and spends the
    # grant's up-front tokens at once. Seen in clean-clone CI runs at 6 test workers on
    # 2026-12-06: 1.107 x and 1.133 x, shares 16 % apart, each time with the bucket bound
    # above and the total below exact.
    assert worst <= 1.25 * RATE, worst
    # Exact over time: within 5 % of the rate (a late grant can only lose time, not add it).
    assert 0.95 * RATE * span <= len(steady) <= RATE * span * 1.02 + 1, len(steady)
    # Fair: equal demand, equal shares, the owner's included (see "Even and fair" above).
    mean = sum(shares.values()) / len(shares)
    assert max(shares.values()) - min(shares.values()) <= 0.25 * mean, shares
