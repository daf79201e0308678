"""The safe-capacity fallback, and waiting for a lease's share, on a virtual clock."""

from __future__ import annotations

import asyncio

from faust_backpressure.tables import DistributedRateLimiter, LimiterLedger
from faust_backpressure.tables.fallback import SafeCapacity
from faust_backpressure.tables.ledger import RATE_TTL_FACTOR
from faust_backpressure.wire.limiter_records import LeaseRequest
from tests.unit.tables._sim import Sim


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def leased(clock: FakeClock, **kwargs: object) -> tuple[DistributedRateLimiter, LimiterLedger]:
    """A limiter (100/s, burst 100, TTL 1 s) past its start-up burst, spending its share."""
    limiter = DistributedRateLimiter("lim", 100, 100, worker_id="w1", lease_ttl=1.0,
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


async def test_acquire_waits_for_the_share_without_spinning() -> None:
    clock = FakeClock()
    limiter, _ = leased(clock)
    while limiter.try_acquire():
        pass
    wait = limiter.time_until_available()
    assert 0 < wait <= 1.0 / 100 * 1.1  # the share refills the level then
    sleeps = limiter.stats().sleeps
    task = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    assert not task.done()  # parked on a timer set to when the share has refilled a permit
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
    limiter = DistributedRateLimiter("lim", 100, 100, worker_id="w1", lease_ttl=1.0,
                                     clock=clock, wall_clock=clock)
    assert unanswered(limiter, clock, 10.0) == []
    assert limiter.lease_counters.fallback_admitted == 0


def test_fallback_admits_at_its_rate_after_the_timeout_and_stops_at_a_grant() -> None:
    clock = FakeClock()
    limiter = DistributedRateLimiter("lim", 100, 100, worker_id="w1", lease_ttl=1.0,
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
    # The owner answers: the fallback stops at once, even for a grant of 0 tokens (the
    # share of the rate refills the lease from then on).
    limiter.try_acquire()
    request = limiter.poll()
    while not isinstance(request, LeaseRequest):
        clock.now += 0.1
        request = limiter.poll()
    ledger = LimiterLedger("lim", limiter.config, clock.now)
    ledger.tokens = 0.0  # an empty bucket
    grant = ledger.handle_lease(request, clock.now)
    assert grant is not None and grant.tokens == 0 and grant.share > 0
    fell_back = limiter.lease_counters.fallback_admitted
    assert limiter.on_grant(grant)
    assert not any(limiter.try_acquire() for _ in range(10))
    clock.now += 0.05
    assert sum(limiter.try_acquire() for _ in range(10)) <= 0.05 * grant.share + 1e-9
    assert limiter.lease_counters.fallback_admitted == fell_back


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


def test_an_outage_with_fallback_keeps_its_documented_bound() -> None:
    rate, fallback, workers, outage = 300.0, 50.0, 3, 6.0
    sim = Sim(rate=rate, burst=300, workers=workers, lease_ttl=1.0,
              fallback_rate=fallback, delay=(0.005, 0.02), seed=5)
    sim.run(4.0)
    assert sum(c.lease_counters.fallback_admitted for c in sim.clients) == 0  # owner is up
    before = len(sim.all_admissions())
    sim.crash_owner(outage)
    sim.run(outage)
    during = len(sim.all_admissions()) - before
    fell_back = sum(c.lease_counters.fallback_admitted for c in sim.clients)
    burst = SafeCapacity(fallback).burst
    assert 0 < fell_back <= workers * (fallback * outage + burst)
    # Leases held at the crash (at most the shared burst) plus W x (f t + burst).
    assert during <= 300 + workers * (fallback * outage + burst)
    # The owner is back, but lost the requests it had: a worker asks again only when it
    # gives its request up, the longest lease after its first send (RATE_TTL_FACTOR TTLs).
    sim.run(RATE_TTL_FACTOR * 1.0 - outage + 1.0)
    after = sum(c.lease_counters.fallback_admitted for c in sim.clients)
    recovered = sim.clock.now
    sim.run(3.0)
    assert sum(c.lease_counters.fallback_admitted for c in sim.clients) == after
    for window in (0.3, 1.0, 3.0):  # leases only again: the bound r*t + b holds
        assert sim.worst_window(window, since=recovered) <= rate * window + 300
