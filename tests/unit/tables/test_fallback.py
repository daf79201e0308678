"""Paced spending of leases and the safe-capacity fallback, on a virtual clock."""

from __future__ import annotations

import asyncio

import pytest

from faust_backpressure.tables import DistributedRateLimiter, LimiterLedger
from faust_backpressure.tables.fallback import SafeCapacity
from faust_backpressure.tables.messages import LeaseRequest
from tests.unit.tables._sim import Sim


def steady(sim: Sim, warm: float, seconds: float) -> tuple[float, list[int]]:
    """Run ``warm`` s, then ``seconds`` s; the start of the steady part and what each worker
    admitted in it."""
    sim.run(warm)
    start = sim.clock.now
    before = [len(a) for a in sim.admitted]
    sim.run(seconds)
    return start, [len(a) - b for a, b in zip(sim.admitted, before, strict=True)]


@pytest.mark.parametrize("workers, rate, burst, ttl", [
    (1, 1000.0, 2000.0, 2.0),   # one worker holding the whole share
    (3, 1000.0, 2000.0, 2.0),   # the setting
    pytest.param(3, 200.0, 200.0, 1.0, marks=pytest.mark.xfail(  # renewal period 0.25 s
        strict=True, reason="open: bonus grants give 1.075 x rate in the worst 1 s window")),
])
def test_steady_demand_is_spent_at_the_pace_of_the_share(workers: int, rate: float,
                                                          burst: float, ttl: float) -> None:
    sim = Sim(paced=True, rate=rate, burst=burst, workers=workers, lease_ttl=ttl,
              delay=(0.005, 0.02))
    start, per_worker = steady(sim, 4.0, 30.0)
    assert sim.worst_window(1.0, since=start) <= 1.05 * rate + 1
    assert abs(sum(per_worker) - rate * 30.0) <= 0.01 * rate * 30.0
    assert max(per_worker) - min(per_worker) <= 0.1 * sum(per_worker) / workers
    for window in (0.05, 0.3, 1.0, 3.0):  # and the bound r*t + b, from the start
        assert sim.worst_excess(window) <= 1e-6


def test_a_burst_is_still_admitted_after_idle_time() -> None:
    sim = Sim(paced=True, rate=1000, burst=2000, workers=1, lease_ttl=2.0, delay=(0.005, 0.02))
    sim.run(6.0)  # steady demand
    sim.demand = [0.0]
    sim.run(5.0)  # idle: the shared bucket refills to its burst
    sim.demand = None
    resumed = sim.clock.now
    sim.run(3.0)
    # The first request after idle time declares little demand: the owner answers it with a
    # token and "come back in a renewal period" (0.5 s); the next grants empty the full
    # bucket, and they are spent at once, not paced.
    first = sum(1 for t in sim.admitted[0] if resumed <= t < resumed + 0.8)
    assert first >= 0.95 * 2000
    assert sim.worst_window(0.1, since=resumed) >= 0.45 * 2000  # at once, not at 1000/s
    after = sim.worst_window(1.0, since=resumed + 1.0)
    assert after <= 1.05 * 1000 + 1  # then paced again
    assert sim.worst_excess(1.0) <= 1e-6


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def leased(clock: FakeClock, **kwargs: object) -> tuple[DistributedRateLimiter, LimiterLedger]:
    """A limiter (100/s, burst 100, TTL 1 s) past its start-up burst, paced by a lease."""
    limiter = DistributedRateLimiter("lim", 100, 100, worker_id="w1", lease_ttl=1.0, paced=True,
                                     clock=clock, wall_clock=clock,
                                     **kwargs)  # type: ignore[arg-type]
    ledger = LimiterLedger("lim", limiter.config, clock.now)
    for _ in range(400):  # 4 s of a greedy caller, answers after 10 ms
        while limiter.try_acquire():
            pass
        request = limiter.poll()
        if isinstance(request, LeaseRequest):
            clock.now += 0.01
            grant = ledger.handle_lease(request, clock.now)
            assert grant is not None
            limiter.on_grant(grant)
        else:
            clock.now += 0.01
    return limiter, ledger


def test_waiters_are_told_when_the_pace_allows_and_the_owner_is_not_asked() -> None:
    clock = FakeClock()
    limiter, _ = leased(clock)
    while limiter.try_acquire():
        pass
    assert limiter.current_tokens >= 1  # the lease has tokens; the pace says not yet
    wait = limiter.time_until_available()
    assert 0 < wait <= 1.0 / 100 * 1.1
    assert limiter.poll() is None  # pacing is not a reason to ask for a lease
    clock.now += wait * 0.5
    assert not limiter.try_acquire()
    clock.now += wait * 0.5 + 1e-9  # (float rounding of the virtual clock)
    assert limiter.try_acquire()  # when it said
    assert limiter.lease_counters.paced > 0


async def test_acquire_waits_for_the_pace_without_spinning() -> None:
    clock = FakeClock()
    limiter, _ = leased(clock)
    while limiter.try_acquire():
        pass
    sleeps = limiter.stats().sleeps
    task = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    assert not task.done()  # parked on a timer set to when the pace allows
    clock.now += limiter.time_until_available() + 1e-6
    await asyncio.wait_for(task, 1.0)  # woken by that timer: one sleep, no polling
    assert limiter.stats().sleeps - sleeps == 1


# -- safe-capacity fallback ------------------------------------------------------------------


def unanswered(limiter: DistributedRateLimiter, clock: FakeClock, seconds: float,
               step: float = 0.001) -> list[float]:
    """A greedy caller for ``seconds`` while nobody answers; when each permit was admitted."""
    admitted = []
    end = clock.now + seconds
    while clock.now < end:
        while limiter.try_acquire():
            admitted.append(clock.now)
        while limiter.poll() is not None:
            pass
        clock.now = round(clock.now + step, 9)
    return admitted


def test_without_fallback_an_unreachable_owner_means_no_admissions() -> None:
    clock = FakeClock()
    limiter = DistributedRateLimiter("lim", 100, 100, worker_id="w1", lease_ttl=1.0, paced=True,
                                     clock=clock, wall_clock=clock)
    assert unanswered(limiter, clock, 10.0) == []
    assert limiter.lease_counters.fallback_admitted == 0


def test_fallback_admits_at_its_rate_after_the_timeout_and_stops_at_a_grant() -> None:
    clock = FakeClock()
    limiter = DistributedRateLimiter("lim", 100, 100, worker_id="w1", lease_ttl=1.0, paced=True,
                                     clock=clock, wall_clock=clock, fallback_rate=20.0)
    start = clock.now
    admitted = unanswered(limiter, clock, 10.0)
    timeout = limiter.request_timeout
    assert admitted and min(admitted) >= start + timeout  # not before the retry timeout
    burst = SafeCapacity(20.0).burst
    assert len(admitted) <= 20.0 * (10.0 - timeout) + burst
    assert len(admitted) >= 0.95 * 20.0 * (10.0 - timeout) - 1
    for t in admitted:  # never above the fallback rate in any window
        assert sum(1 for u in admitted if t <= u < t + 1.0) <= 20.0 + burst
    assert limiter.lease_counters.fallback_admitted == len(admitted)
    assert limiter.stats().granted == len(admitted)
    # The owner answers: the fallback stops at once, even for a grant of 0 tokens.
    limiter.try_acquire()
    request = limiter.poll()
    while not isinstance(request, LeaseRequest):
        clock.now += 0.1
        request = limiter.poll()
    ledger = LimiterLedger("lim", limiter.config, clock.now)
    ledger.tokens = 0.0  # an empty bucket
    grant = ledger.handle_lease(request, clock.now)
    assert grant is not None and grant.tokens == 0
    assert limiter.on_grant(grant)
    assert not any(limiter.try_acquire() for _ in range(10))
    clock.now += 0.05
    assert not any(limiter.try_acquire() for _ in range(10))
    assert limiter.lease_counters.fallback_admitted == len(admitted)


def test_fallback_waits_for_the_lease_to_expire_then_the_retry_timeout() -> None:
    clock = FakeClock()
    limiter, _ = leased(clock, fallback_rate=50.0)
    expires = limiter._lease_expiry  # the owner goes silent; its last lease is still valid
    admitted = unanswered(limiter, clock, 3.0)
    fell_back = limiter.lease_counters.fallback_admitted
    assert fell_back > 0
    # The lease (at most one TTL from its request) is spent first; the fallback begins a
    # retry timeout after it expired.
    first_fallback = admitted[len(admitted) - fell_back]
    assert first_fallback >= expires + limiter.request_timeout
    assert fell_back <= 50.0 * (3.0 - limiter.request_timeout) + SafeCapacity(50.0).burst


@pytest.mark.xfail(strict=True, reason="open: the bound holds; the last smoothness check "
                   "(<= 1.05 rate after recovery) does not yet at a 0.25 s renewal period")
def test_an_outage_with_fallback_keeps_its_documented_bound() -> None:
    rate, fallback, workers, outage = 300.0, 50.0, 3, 6.0
    sim = Sim(paced=True, rate=rate, burst=300, workers=workers, lease_ttl=1.0,
              fallback_rate=fallback, delay=(0.005, 0.02), seed=5)
    sim.run(4.0)
    assert sum(c.lease_counters.fallback_admitted for c in sim.clients) == 0  # owner is up
    before = len(sim.all_admissions())
    down = sim.clock.now
    sim.crash_owner(outage)
    sim.run(outage)
    during = len(sim.all_admissions()) - before
    fell_back = sum(c.lease_counters.fallback_admitted for c in sim.clients)
    burst = SafeCapacity(fallback).burst
    assert 0 < fell_back <= workers * (fallback * outage + burst)
    # Leases held at the crash (at most the shared burst) plus W x (f t + burst).
    assert during <= 300 + workers * (fallback * outage + burst)
    sim.run(4.0)  # the owner is back: leases again, no more fallback
    after = sum(c.lease_counters.fallback_admitted for c in sim.clients)
    sim.run(2.0)
    assert sum(c.lease_counters.fallback_admitted for c in sim.clients) == after
    assert sim.worst_window(1.0, since=down + outage + 2.0) <= 1.05 * rate + 1
