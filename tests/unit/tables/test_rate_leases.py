"""Rate leases (issue 13): a share of the rate for the lease's life, on a virtual clock.

The targets of issue 13, in simulation: worst steady 1 s window <= 1.05 x rate, equal demand
gets shares within 10 %, admitted within 1-2 % of rate x t, the bound ``r t + b`` in every
window, and an owner that cannot answer every (worker, id) pair each second still admits."""

from __future__ import annotations

import json

import pytest

from faust_backpressure.tables import DistributedRateLimiter, LimiterConfig, LimiterLedger
from faust_backpressure.wire.limiter_records import (
    Grant,
    LeaseRequest,
    decode_replies,
    decode_requests,
    encode,
    encode_replies,
)
from tests.unit.tables._sim import Sim
from tests.unit.tables.test_busy_owner import run_overloaded

WINDOWS = (0.05, 0.3, 1.0, 3.0)


def steady(sim: Sim, warm: float, seconds: float) -> tuple[float, list[int]]:
    sim.run(warm)
    start = sim.clock.now
    before = [len(a) for a in sim.admitted]
    sim.run(seconds)
    return start, [len(a) - b for a, b in zip(sim.admitted, before, strict=True)]


@pytest.mark.parametrize("workers, rate, burst, ttl", [
    (1, 1000.0, 2000.0, 2.0),
    (3, 1000.0, 2000.0, 2.0),   # the evenness run of issue 13
    (3, 200.0, 200.0, 1.0),     # where the removed paced token leases reached 1.075 x rate
    (3, 50.0, 50.0, 1.0),       # one id of the many-ids run
])
def test_steady_greedy_demand_is_even_fair_and_exact(workers: int, rate: float, burst: float,
                                                      ttl: float) -> None:
    sim = Sim(rate=rate, burst=burst, workers=workers, lease_ttl=ttl,
              delay=(0.005, 0.02))
    start, per_worker = steady(sim, 4.0, 30.0)
    print(sim.worst_window(1.0, since=start) / rate, per_worker)
    assert sim.worst_window(1.0, since=start) <= 1.05 * rate + 1
    assert abs(sum(per_worker) - rate * 30.0) <= 0.02 * rate * 30.0
    assert max(per_worker) - min(per_worker) <= 0.1 * sum(per_worker) / workers
    for window in WINDOWS:
        assert sim.worst_excess(window) <= 1e-6
    requests = sum(c.lease_counters.requests for c in sim.clients)
    assert requests * 1000 <= 10 * len(sim.all_admissions()) or rate < 1000


def test_unequal_demand_gets_max_min_shares() -> None:
    sim = Sim(rate=200, burst=100, workers=3, lease_ttl=1.0,
              demand=[30, 1e6, 1e6], delay=(0.005, 0.02))
    _, per_worker = steady(sim, 4.0, 20.0)
    rates = [n / 20.0 for n in per_worker]
    assert abs(rates[0] - 30) <= 3
    assert abs(rates[1] - rates[2]) <= 0.1 * 85
    # The small worker's share is 1.25 x its demand (room to grow): 7.5/s of 200 reserved
    # and unused is the price.
    assert sum(rates) >= 0.95 * 200


def test_a_worker_that_stops_gives_its_share_to_the_others_within_a_few_leases() -> None:
    sim = Sim(rate=300, burst=300, workers=3, lease_ttl=1.0,
              delay=(0.005, 0.02))
    sim.run(4.0)
    sim.kill_worker(0)
    _, per_worker = steady(sim, 3.0, 10.0)
    assert per_worker[0] == 0
    assert sum(per_worker) >= 0.97 * 300 * 10.0
    assert abs(per_worker[1] - per_worker[2]) <= 0.1 * per_worker[1]
    for window in WINDOWS:
        assert sim.worst_excess(window) <= 1e-6


def test_after_a_broker_outage_both_workers_are_back_at_their_share_within_two_seconds() -> None:
    # The request partition's leader dies for 6 s: requests wait in the producers and then
    # arrive together, having waited up to 6 s. That backlog is not a busy owner: it must
    # not stretch the leases it grants then (one worker held the whole rate for ~11 s).
    rate, outage = 40.0, 6.0
    sim = Sim(rate=rate, burst=rate, workers=2, lease_ttl=2.0,
              delay=(0.005, 0.03), dt=0.005)
    sim.run(20.0)
    sim.broker_outage(outage)
    sim.run(outage + 2.0)
    since = sim.clock.now
    sim.run(4.0)
    each = [sum(1 for t in times if t >= since) for times in sim.admitted]
    assert sum(each) >= 0.9 * rate * 4.0, each
    assert min(each) >= 0.9 * max(each), each


def test_the_burst_is_still_there_after_idle_time() -> None:
    sim = Sim(rate=1000, burst=2000, workers=1, lease_ttl=2.0,
              delay=(0.005, 0.02))
    sim.run(6.0)
    sim.demand = [0.0]
    sim.run(8.0)  # the lease expires unrenewed, the shared bucket refills to its burst
    sim.demand = None
    resumed = sim.clock.now
    sim.run(3.0)
    assert sim.worst_window(0.5, since=resumed) >= 0.9 * 2000  # the burst, at once
    assert sim.worst_window(1.0, since=resumed + 1.5) <= 1.05 * 1000 + 1  # then the rate
    for window in WINDOWS:
        assert sim.worst_excess(window) <= 1e-6


def test_an_owner_that_answers_600_requests_a_second_serves_hundreds_of_ids() -> None:
    # 3 workers try every id every 10 ms; each id 50/s, burst 50, TTL 1 s. Token leases need
    # each (worker, id) to renew about every 0.8 s: 320 ids = 1,200 requests/s, twice what the
    # owner answers; they collapse there (0 % in this simulation). Rate leases grow with the
    # owner's queue delay, so the workers ask less often instead.
    results = {ids: run_overloaded(ids, capacity=600.0, seconds=30.0)
               for ids in (40, 320, 640)}
    print({ids: f"{a:.0f}/{allowed:.0f}" for ids, (a, allowed) in results.items()})
    for admitted, allowed in results.values():
        assert admitted >= 0.95 * allowed


def test_a_renewal_that_lowers_the_share_keeps_the_old_one_reserved_until_it_expires() -> None:
    config = LimiterConfig(rate=100.0, burst=100.0, lease_ttl=1.0)
    ledger = LimiterLedger("lim", config, 0.0)

    def request(worker: str, seq: int, now: float, lease_id: str | None = None,
                unspent: float = 0.0) -> LeaseRequest:
        return LeaseRequest(request_id=f"{worker}:lim:{seq}", limiter_id="lim",
                            worker_id=worker, demand=1e6, requested=100, sent_at=now,
                            lease_id=lease_id, unspent=unspent, config=config, seq=seq)

    a1 = ledger.handle_lease(request("a", 1, 0.0), 0.0)
    assert a1 is not None and a1.share == pytest.approx(100.0)  # alone: the whole rate
    assert a1.ttl == pytest.approx(0.25)  # a first lease is short (others may come)
    b1 = ledger.handle_lease(request("b", 1, 0.05), 0.05)
    assert b1 is not None and b1.share == 0.0  # a holds it all until it renews
    assert b1.retry_after <= 0.25 * b1.ttl  # short of its fair share: come back soon
    a2 = ledger.handle_lease(request("a", 2, 0.2, a1.lease_id, 1.0), 0.2)
    assert a2 is not None and a2.share == pytest.approx(50.0) and a2.renews == a1.lease_id
    assert a2.ttl == pytest.approx(1.0)  # a renewal: the configured TTL
    # a may still spend at 100/s until it reads a2: the other 50/s stay reserved.
    assert ledger.reserved() == pytest.approx(100.0)
    b2 = ledger.handle_lease(request("b", 2, 0.22), 0.22)
    assert b2 is not None and b2.share == 0.0
    b3 = ledger.handle_lease(request("b", 3, 0.3), 0.3)  # a1 expired at 0.25
    assert b3 is not None and b3.share == pytest.approx(50.0)
    assert ledger.reserved() <= 100.0 + 1e-9
    assert ledger.tokens + ledger.outstanding() <= 100.0 + 1e-9
    # The record round-trips (and records without shares still load).
    again = LimiterLedger.from_record(json.loads(json.dumps(ledger.to_record())))
    assert again.reserved() == pytest.approx(ledger.reserved())
    assert again.handle_lease(request("b", 3, 0.3), 0.35) == b3  # a resend: the same grant


def test_a_known_worker_that_renews_after_its_own_expiry_gets_a_full_lease_and_share() -> None:
    """The many-ids shortfall (86-92 % on real workers): a worker's lease ends on its clock
    (from its send) before it does on the owner's (from the owner's read). Renewing just after
    its own expiry, it sends no lease id. Keyed on that, the owner treated it as a newcomer (a
    short lease: renewed late again, for ever) and counted its old lease, still running on the
    owner's clock, against its new share."""
    config = LimiterConfig(rate=100.0, burst=100.0, lease_ttl=1.0)
    ledger = LimiterLedger("lim", config, 0.0)

    def request(worker: str, seq: int, sent_at: float) -> LeaseRequest:
        return LeaseRequest(request_id=f"{worker}:lim:{seq}", limiter_id="lim",
                            worker_id=worker, demand=1e6, requested=100, sent_at=sent_at,
                            lease_id=None, unspent=0.0, config=config, seq=seq)

    a1 = ledger.handle_lease(request("a", 1, 0.0), 0.04)  # read 40 ms after its send
    assert a1 is not None and a1.ttl == pytest.approx(0.25)  # a newcomer: short
    b1 = ledger.handle_lease(request("b", 1, 0.05), 0.05)
    assert b1 is not None and b1.ttl == pytest.approx(0.25)
    # a's lease ended at 0.25 on its clock; the owner's copy runs until 0.29.
    a2 = ledger.handle_lease(request("a", 2, 0.27), 0.28)
    assert a2 is not None
    assert a2.ttl == pytest.approx(1.0)  # known: a full lease, not another short one
    assert a2.share == pytest.approx(50.0)  # its fair half, not 100 minus its own old lease
    assert ledger.reserved() <= 100.0 + 1e-9
    assert ledger.tokens + ledger.outstanding() <= 100.0 + 1e-9


def test_share_fields_round_trip_and_a_forged_share_is_cut_to_the_rate() -> None:
    config = LimiterConfig(rate=100.0, burst=100.0, lease_ttl=1.0)
    req = LeaseRequest(request_id="w:lim:1", limiter_id="lim", worker_id="w", demand=10.0,
                       requested=10, sent_at=5.0, lease_id=None, unspent=0.0, config=config,
                       seq=1)
    assert decode_requests(b"lim", encode(req, key=b"lim", secret=b"s"), b"s") == [req]
    clock = [10.0]
    limiter = DistributedRateLimiter("lim", 100, 100, worker_id="w", lease_ttl=1.0,
                                     clock=lambda: clock[0],
                                     wall_clock=lambda: clock[0])
    assert not limiter.try_acquire()
    sent = limiter.poll()
    assert isinstance(sent, LeaseRequest)
    forged = Grant(request_id=sent.request_id, limiter_id="lim", worker_id="w", lease_id="9",
                   tokens=0, ttl=1.0, renews=None, retry_after=0.5, epoch=0, rate=100.0,
                   burst=100.0, share=1e9, share_cap=1e9)
    assert decode_replies(encode_replies([forged])) == [forged]
    clock[0] += 0.01
    assert limiter.on_grant(forged)
    clock[0] += 0.5
    admitted = sum(limiter.try_acquire() for _ in range(10_000))
    assert admitted <= 100  # at most the burst, not a billion


@pytest.mark.parametrize("ttl", [1.0, 2.0])
def test_a_lower_rate_set_on_every_worker_is_kept_at_once_not_a_lease_later(ttl: float) -> None:
    """A learnt quota that fell (issue 22): every worker sets the same lower rate; each
    worker's share follows at once, not at its next grant (a 2 s lease kept 102/s of a
    91/s share for 1.4 s and its 429s were taken for spreading)."""
    sim = Sim(rate=300, burst=30, workers=3, lease_ttl=ttl, delay=(0.05, 0.2))
    sim.run(5.0)
    for client in sim.clients:
        client.update_rate_limit(150.0)
    start = sim.clock.now
    sim.run(3.0)
    # the levels held at the change (each lease's cap: 50 ms of its share, >= 2), no more
    assert sim.worst_window(0.5, since=start) <= 150 * 0.5 + 30
    assert sim.worst_window(1.0, since=start + 0.5) <= 150 * 1.05
    # and no less: the owner does not keep the old shares reserved (the others' renewals
    # were cut to what they left, 15-26/s each for a lease's life)
    times = [t for t in sim.all_admissions() if start + 0.5 <= t < start + 2.5]
    assert len(times) >= 0.95 * 150 * 2.0
    assert all(client.current_rate_limit == 150.0 for client in sim.clients)


def _demand_after_a_pause(restart: bool) -> float:
    """The demand a worker declares after 100/s for 0.5 s, a 1 s pause of its calls, then
    200/s for 0.1 s (``restart``: it said when its calls resumed)."""
    sim = Sim(rate=300, burst=30, workers=1)
    client, clock = sim.clients[0], sim.clock
    ledger = LimiterLedger("lim", client.config, clock.now)

    def answer() -> LeaseRequest:
        message = client.poll(clock.now)
        assert isinstance(message, LeaseRequest)
        grant = ledger.handle_lease(message, clock.now)
        assert grant is not None and client.on_grant(grant, clock.now)
        return message

    for _ in range(50):
        client.try_acquire()
        clock.now += 0.01
    answer()
    clock.now += 1.0 + 2.0 * client.config.lease_ttl  # the pause: the lease ran out in it
    if restart:
        client.restart_demand()
    for _ in range(20):
        client.try_acquire()
        clock.now += 0.005
    return answer().demand


def test_demand_is_measured_from_when_calls_resume_after_a_pause() -> None:
    # read over the pause, the first request after it declared a fraction of the demand and
    # was granted that much: 21.9/s of a 43.8/s share for a second after a learnt quota's
    # pause (issue 22's halving, 30,000 events, round 5)
    assert _demand_after_a_pause(restart=True) == pytest.approx(200, rel=0.1)
    assert _demand_after_a_pause(restart=False) < 10
