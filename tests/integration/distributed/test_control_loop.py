"""The control loop across real workers: one decides, every worker's share follows."""

from __future__ import annotations

import math
import time

import pytest

from faust_backpressure.testing.kafka_io import (
    commit_offsets,
    create_topics,
    end_offsets,
    produce,
)
from tests.integration.distributed.conftest import Cluster, admissions, reported_until

pytestmark = pytest.mark.kafka

RATE = 200.0


async def started_reading_nothing(bootstrap: str, group: str, topic: str) -> None:
    """The downstream group has started and read nothing (committed 0 everywhere): a group
    with no commits at all is a warning, not throttled on (docs/control-loop.md)."""
    await commit_offsets(bootstrap, group, topic, dict.fromkeys(
        await end_offsets(bootstrap, topic), 0))


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_downstream_lag_slows_every_worker_and_calm_restores_them(
        cluster: Cluster, guarantee: str) -> None:
    # exactly_once: the sampling timer sends outside any event; it crashed the worker.
    cluster.env["FBP_GUARANTEE"] = guarantee
    downstream, group = cluster.env["FBP_APP_ID"] + "-priced", cluster.env["FBP_APP_ID"] + "-b"
    await create_topics(cluster.bootstrap, {downstream: 2})
    await produce(cluster.bootstrap, downstream, ((None, b"x") for _ in range(300)))
    await started_reading_nothing(cluster.bootstrap, group, downstream)
    cluster.env["FBP_LIMITERS"] = f"api:{RATE:g}:{RATE:g}"
    cluster.env["FBP_CONTROL"] = f"api:{group}:{downstream}:0.3"
    cluster.start_settled("w0", "w1")
    go = cluster.go()
    workers = ("w0", "w1")

    def rates_seen(rs: list[dict], rate: float, after: float) -> bool:  # type: ignore[type-arg]
        return all(any(r["worker"] == w and r["rate"] == rate and r["at"] > after for r in rs)
                   for w in workers)

    # Lag 300 > critical 200 (scaled): the decider drops the shared rate to 1/s; both see it.
    reports = await cluster.reports(lambda rs: rates_seen(rs, 1.0, go), timeout=30)
    slowed = max(r["at"] for r in reports)
    calm_from = time.time() + 3.0
    reports = await cluster.reports(
        lambda rs: reported_until(rs) > calm_from + 0.5, timeout=30)
    held = [t for t in admissions(reports, "api") if slowed + 1.5 <= t <= calm_from]
    # Leases granted before the change expire within a TTL (1 s); after that, about 1/s.
    assert len(held) <= 0.1 * RATE * (calm_from - slowed - 1.5), len(held)
    assert all(r["rate"] == 1.0 for r in reports if slowed + 0.5 <= r["at"] <= calm_from)

    # Billing catches up: the rate climbs back to 200/s on both workers, admissions follow.
    await commit_offsets(cluster.bootstrap, group, downstream,
                         await end_offsets(cluster.bootstrap, downstream))
    caught_up = time.time()
    reports = await cluster.reports(lambda rs: rates_seen(rs, RATE, caught_up), timeout=30)
    restored = max(r["at"] for r in reports)
    reports = await cluster.reports(
        lambda rs: reported_until(rs) > restored + 4.0, timeout=30)
    after = [t for t in admissions(reports, "api") if restored + 1 <= t <= restored + 4]
    print(f"held {len(held)} admissions while lagging; {len(after) / 3:.0f}/s once restored")
    assert len(after) >= 0.8 * RATE * 3, len(after)
    for w in workers:
        assert admissions(reports, "api", w), w  # both workers took part
    # Both workers' samples reached the decider, and no worker died on the way.
    assert max(r["sampled_workers"] for r in reports) == len(workers)
    assert all(worker.alive for worker in cluster.workers)


async def test_a_successor_keeps_the_emergency_when_the_deciding_worker_is_sigkilled(
        cluster: Cluster) -> None:
    downstream, group = cluster.env["FBP_APP_ID"] + "-priced", cluster.env["FBP_APP_ID"] + "-b"
    await create_topics(cluster.bootstrap, {downstream: 2})
    await started_reading_nothing(cluster.bootstrap, group, downstream)
    cluster.env["FBP_LIMITERS"] = f"api:{RATE:g}:{RATE:g}"
    cluster.env["FBP_CONTROL"] = f"api:{group}:{downstream}:0.3"
    workers = dict(zip(("w0", "w1"), cluster.start_settled("w0", "w1"), strict=True))
    go = cluster.go()
    # The backlog comes once the group has settled: only the key's owner ever sees it, so the
    # other worker's controller has never been in an emergency when it takes over.
    await produce(cluster.bootstrap, downstream, ((None, b"x") for _ in range(300)))

    def decisions(rs: list[dict], worker: str, until: float = math.inf) -> int:  # type: ignore[type-arg]
        return max((r["decisions"] for r in rs if r["worker"] == worker and r["at"] <= until),
                    default=0)

    # Emergency (lag 300), then the downstream gets most of the way: lag 30 is under the
    # (scaled) scaling threshold but not cleared, so the emergency must hold.
    # Every worker has seen the emergency rate (a loaded CI run read one worker's 1/s, and the
    # other's last 200/s after it, when only one was waited for).
    await cluster.reports(lambda rs: all(any(r["worker"] == w and r["rate"] == 1.0
                                             and r["at"] > go for r in rs) for w in workers))
    ends = await end_offsets(cluster.bootstrap, downstream)
    await commit_offsets(cluster.bootstrap, group, downstream,
                         {p: end - 15 for p, end in ends.items()})
    settled = time.time() + 2.0
    reports = await cluster.reports(lambda rs: reported_until(rs) > settled)
    # Both may have decided while the group formed; now only one does (the key's owner).
    growth = {w: decisions(reports, w) - decisions(reports, w, settled - 1.5) for w in workers}
    decider = max(workers, key=lambda w: growth[w])
    survivor = next(w for w in workers if w != decider)
    assert growth[decider] > 0 and growth[survivor] == 0, growth
    before = decisions(reports, survivor)
    off = [(r["worker"], round(r["at"] - settled, 2), r["rate"]) for r in reports
           if r["at"] > settled - 1.0 and r["rate"] != 1.0]
    assert not off, off

    workers[decider].kill()
    killed = time.time()
    reports = await cluster.reports(lambda rs: decisions(rs, survivor) >= before + 5,
                                    timeout=60)
    after = [r for r in reports if r["worker"] == survivor and r["at"] > killed]
    # The successor restored the emergency from the table: still 1/s (a fresh controller
    # would have restored toward 200/s at once, lag 30 being no emergency by itself).
    assert after and all(r["rate"] == 1.0 for r in after), sorted({r["rate"] for r in after})

    # And it is the decider now: once the downstream has caught up it restores the rate.
    await commit_offsets(cluster.bootstrap, group, downstream, ends)
    await cluster.reports(lambda rs: any(r["worker"] == survivor and r["rate"] == RATE
                                         for r in rs), timeout=30)
