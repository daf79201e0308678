"""Real broker, real `faust worker` processes sharing distributed limiters."""

from __future__ import annotations

import pytest

from tests.integration.distributed.conftest import (
    Cluster,
    admissions,
    reported_until,
    worst_window,
)

pytestmark = pytest.mark.kafka

RATE, BURST = 200.0, 200.0


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_three_workers_share_one_bucket_at_the_rate(cluster: Cluster,
                                                          guarantee: str) -> None:
    # exactly_once: lease requests of workers that do not own the limiter's partition must
    # not need that partition's transaction (they failed with "No transaction producer").
    cluster.env["FBP_GUARANTEE"] = guarantee
    cluster.env["FBP_LIMITERS"] = f"shared:{RATE:g}:{BURST:g}"
    cluster.start_settled("w0", "w1", "w2")
    cluster.go()
    span, settle = 23.0, 3.0
    reports = await cluster.reports(
        lambda rs: len(admissions(rs)) > 0 and reported_until(rs) > admissions(rs)[0] + span + 1)
    times = admissions(reports, "shared")
    t0 = times[0]
    for w in ("w0", "w1", "w2"):  # per second from t0: shows where a shortfall sits
        mine = admissions(reports, "shared", w)
        print(w, [sum(1 for t in mine if t0 + s <= t < t0 + s + 1) for s in range(int(span))])
    # Safety, from the first admission: never more than the bucket allows.
    in_span = [t for t in times if t <= t0 + span]
    assert len(in_span) <= RATE * span + BURST, len(in_span)
    assert worst_window(times, 1.0) <= RATE * 1.0 + BURST
    # The rate, once the workers hold their shares (the target: within 5 %). Not from t0:
    # while shares are first split, the first worker holds the whole rate on a short
    # newcomer lease and the others wait for it (docs/distributed.md, owner item 7), so
    # what the cold start admits depends on the answer times of a loaded machine: 3,914 of
    # 4,200 under the full suite, 4,044-4,190 beside busy loops, 4,173-4,190 alone. Three
    # lease TTLs cover that start (every worker has renewed by then).
    steady = [t for t in times if t0 + settle <= t < t0 + span]
    expected = RATE * (span - settle)
    start = len([t for t in times if t < t0 + settle])
    print(f"cold start: {start} in {settle:g} s (at most {RATE * settle + BURST:.0f}); "
          f"then {len(steady)} in {span - settle:g} s ({len(steady) / expected:.1%} of the rate)")
    assert 0.95 * expected <= len(steady) <= expected + BURST, (len(steady), expected)
    # Each worker holds its third of the rate (max-min fair: equal demands, equal shares).
    per_worker = {w: len([t for t in admissions(reports, "shared", w)
                          if t0 + settle <= t < t0 + span]) for w in ("w0", "w1", "w2")}
    assert all(abs(n - expected / 3) <= 0.10 * expected / 3 for n in per_worker.values()), \
        per_worker


async def test_two_ids_on_the_same_workers_stay_independent(cluster: Cluster) -> None:
    cluster.env["FBP_LIMITERS"] = "fast:150:150,slow:30:30"
    cluster.start_settled("w0", "w1")
    cluster.go()
    reports = await cluster.reports(
        lambda rs: len(admissions(rs)) > 0 and reported_until(rs) > admissions(rs)[0] + 11)
    start = admissions(reports)[0]
    for lid, rate, burst in (("fast", 150, 150), ("slow", 30, 30)):
        times = [t for t in admissions(reports, lid) if start + 1 <= t <= start + 11]
        # Independent: each id near its own rate, never over its bound. Within 15 %, not the
        # 5 % target (bench/distributed.py: 1000-1006/s in 5 rounds): two ids on workers that
        # share a loaded CI box with other tests.
        assert 0.85 * rate * 10 <= len(times) <= rate * 10 + burst, (lid, len(times))


async def test_two_equal_workers_get_about_half_each(cluster: Cluster) -> None:
    cluster.env["FBP_LIMITERS"] = "fair:200:200"  # burst >= rate * ttl: see the docs
    cluster.start_settled("w0", "w1")
    cluster.go()
    reports = await cluster.reports(
        lambda rs: len(admissions(rs)) > 0 and reported_until(rs) > admissions(rs)[0] + 13)
    start = admissions(reports)[0] + 2  # after the first burst
    counts = [len([t for t in admissions(reports, "fair", w) if start <= t <= start + 10])
              for w in ("w0", "w1")]
    # The criterion: each gets about half, within 15% of an equal share.
    half = sum(counts) / 2
    print(f"admitted per worker over 10 s: {counts} (equal share {half:.0f})")
    assert all(abs(count - half) <= 0.15 * half for count in counts), counts


async def test_multi_tier_with_a_per_consumer_tier_admits_what_every_tier_allows(
        cluster: Cluster) -> None:
    # Global 150/s shared; consumer tier 60/s per live worker: with 2 workers the consumer tier
    # (2 x 60 = 120/s) binds, each worker gets about 60/s, and the global bound always holds.
    cluster.env.update(FBP_LIMITERS="", FBP_MULTI="mt:150:150:60:60", FBP_LEASE_TTL="1.0")
    cluster.start_settled("w0", "w1")
    cluster.go()
    reports = await cluster.reports(
        lambda rs: len(admissions(rs)) > 0 and reported_until(rs) > admissions(rs)[0] + 13)
    start = admissions(reports)[0] + 3  # after the first bursts
    span = 10.0
    per_worker = [len([t for t in admissions(reports, "mt", w) if start <= t <= start + span])
                  for w in ("w0", "w1")]
    print(f"admitted per worker over {span:g} s: {per_worker}")
    assert 0.8 * 120 * span <= sum(per_worker) <= 120 * span + 2 * 60, per_worker
    assert all(0.7 * 60 * span <= n <= 60 * span + 60 for n in per_worker), per_worker
    assert worst_window(admissions(reports, "mt"), 1.0) <= 150 + 150
