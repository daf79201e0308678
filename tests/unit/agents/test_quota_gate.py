"""Quota gates: a worker's own learnt rate, and one learnt by every worker together."""

from __future__ import annotations

import asyncio
import time

import pytest

from faust_backpressure.agents.quota_gate import LocalQuota, SharedQuota
from faust_backpressure.app.downstream_ops import QuotaReport, quota_key
from faust_backpressure.app.installer import learnt_quota_burst
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.limiters.quota import QuotaLearner
from faust_backpressure.tables import DistributedRateLimiter
from faust_backpressure.wire.limiter_records import Command
from faust_backpressure.wire.signing import RejectedRecord
from tests.unit.limiters.conftest import FakeClock


def served(learner: QuotaLearner, clock: FakeClock, per_second: int, seconds: int) -> None:
    for _ in range(seconds):
        for _ in range(per_second):
            learner.started()
            clock.advance(1 / per_second)
            learner.succeeded()


async def test_a_shared_quota_backs_off_from_what_every_worker_was_served() -> None:
    clock = FakeClock()
    learner = QuotaLearner(clock=clock)
    limiter = TokenBucketRateLimiter(1000, 20, clock=clock)
    sent: list[tuple[str, float, float, bool]] = []

    async def reporter(name: str, episode: float, rate: float, whole: bool) -> None:
        sent.append((name, episode, rate, whole))

    quota = SharedQuota("api", learner, limiter, worker="w1", reporter=reporter,
                        wall_clock=time.time, settle=0.01)
    assert quota.rate is None  # nothing learnt: the limiter is not used
    served(learner, clock, 100, 3)  # this worker: 100/s
    until = time.time() + 1.0
    quota.episode(until, 1.0)
    quota.report("w2", until + 1e-7, 120.0)  # the same episode (rounding)
    quota.report("w3", until, 80.0)
    quota.report("w4", until - 30.0, 500.0)  # an earlier episode: not counted
    await asyncio.sleep(0.05)
    assert sent == [("api", until, pytest.approx(100.0), True)]
    assert quota.total(until) == pytest.approx(300.0)
    assert quota.rate == pytest.approx(270.0)  # 0.9 x what all were served
    assert limiter.current_rate_limit == pytest.approx(270.0)


async def test_a_given_rate_is_the_ceiling_and_its_permits_are_taken_from_the_start() -> None:
    clock = FakeClock()
    learner = QuotaLearner(clock=clock)
    limiter = TokenBucketRateLimiter(200, 1, initial_tokens=1, clock=clock)
    quota = SharedQuota("api", learner, limiter, worker="w1", reporter=None,
                        wall_clock=time.time, given=True, settle=0.01)
    assert quota.rate == 200.0
    await quota.acquire()
    assert limiter.current_tokens < 1  # the permit came from the limiter
    served(learner, clock, 100, 2)
    until = time.time() + 0.5
    quota.episode(until, 0.5)
    quota.report("w2", until, 400.0)  # 500 in all, above the given 200
    await asyncio.sleep(0.05)
    assert quota.rate == pytest.approx(180.0)


async def test_a_local_quota_keeps_to_this_workers_share_only() -> None:
    clock = FakeClock()
    learner = QuotaLearner(clock=clock)
    quota = LocalQuota(learner, clock=clock)
    served(learner, clock, 100, 3)
    assert quota.episode(time.time() + 1, 1.0) == ", then 90.0/s"
    quota.report("w2", time.time() + 1, 500.0)  # ignored: local
    assert quota.rate == pytest.approx(90.0)


def test_quota_reports_are_signed_and_range_checked() -> None:
    now = time.time()
    report = QuotaReport("api", now + 1, 120.5, "w2", now)
    key = quota_key("api/w2")
    assert QuotaReport.decode(report.encode(b"k"), key, b"k", now=now, max_skew=10) == report
    with pytest.raises(RejectedRecord):  # unsigned, with a secret set
        QuotaReport.decode(report.encode(None), key, b"k", now=now, max_skew=10)
    with pytest.raises(RejectedRecord):  # under another worker's key
        QuotaReport.decode(report.encode(None), quota_key("api/w3"), None, now=now,
                           max_skew=10)
    part = QuotaReport("api", now + 1, 120.5, "w2", now, whole=False)
    assert QuotaReport.decode(part.encode(None), key, None, now=now, max_skew=10) == part
    for bad in (QuotaReport("api", now + 1, 1e9, "w2", now),      # served out of range
                QuotaReport("api", now + 1, 10.0, "w2", now, "no"),  # type: ignore[arg-type]
                QuotaReport("api", now + 1e5, 10.0, "w2", now),   # episode far away
                QuotaReport("api", now + 1, 10.0, "w2", now + 60)):  # from the future
        with pytest.raises(RejectedRecord):
            QuotaReport.decode(bad.encode(None), key, None, now=now, max_skew=10)


def held_quota() -> tuple[FakeClock, QuotaLearner, TokenBucketRateLimiter, SharedQuota]:
    """One worker's shared quota (no reporter) on a virtual clock, holding a new rate 60 s."""
    clock = FakeClock()
    learner = QuotaLearner(clock=clock)
    limiter = TokenBucketRateLimiter(1000, 20, clock=clock)
    return clock, learner, limiter, SharedQuota("api", learner, limiter, worker="w1",
                                                reporter=None, wall_clock=time.time,
                                                settle=0.01, hold=60.0)


async def test_slow_downs_right_after_a_new_rate_only_pause() -> None:
    clock, learner, _, quota = held_quota()
    served(learner, clock, 300, 3)
    quota.episode(time.time() + 0.02, 0.02)
    await asyncio.sleep(0.05)
    assert quota.rate == pytest.approx(270.0)
    served(learner, clock, 280, 1)  # calls sent before the new rate spread answer 429
    assert "still spreading" in quota.episode(time.time() + 1.5, 1.5)
    await asyncio.sleep(0.05)
    assert quota.rate == pytest.approx(270.0)  # not backed off again


async def test_a_rate_read_over_part_of_an_interval_is_narrowed_within_the_hold() -> None:
    clock, learner, limiter, quota = held_quota()
    for _ in range(300):  # 300 calls in the first 0.6 s: part of an interval, 500/s
        learner.started()
        clock.advance(0.6 / 300)
        learner.succeeded()
    quota.episode(time.time() + 0.02, 0.02)
    await asyncio.sleep(0.05)
    assert quota.rate == pytest.approx(450.0) and learner.bounded
    clock.advance(0.02)
    served(learner, clock, 300, 3)  # the ramp, a whole second at the quota, a 429 in the hold
    assert "served here" in quota.episode(time.time() + 1.0, 1.0)
    await asyncio.sleep(0.05)
    assert quota.rate == pytest.approx(270.0)  # narrowed: 0.9 x 300, a measurement now
    assert limiter.current_rate_limit == pytest.approx(270.0) and not learner.bounded
    served(learner, clock, 280, 1)  # and the hold holds again for a measured rate
    assert "still spreading" in quota.episode(time.time() + 1.5, 1.5)


async def test_one_workers_reading_from_part_of_an_interval_bounds_the_total() -> None:
    clock = FakeClock()
    learner = QuotaLearner(clock=clock)
    quota = SharedQuota("api", learner, TokenBucketRateLimiter(1000, 20, clock=clock),
                        worker="w1", reporter=None, wall_clock=time.time, settle=0.01)
    served(learner, clock, 100, 3)  # a whole interval here...
    until = time.time() + 1.0
    quota.episode(until, 1.0)
    quota.report("w2", until, 250.0, whole=False)  # ...but not at w2: the sum is a bound
    quota.report("w3", until, 0.0, whole=False)  # served nothing: no reading to doubt
    await asyncio.sleep(0.05)
    assert quota.rate == pytest.approx(315.0) and learner.bounded


async def test_an_announced_quota_becomes_the_shared_rate_and_only_caps_a_local_one() -> None:
    clock = FakeClock()
    limiter = TokenBucketRateLimiter(1000, 20, clock=clock)
    shared = SharedQuota("api", QuotaLearner(clock=clock), limiter, worker="w1",
                         reporter=None, wall_clock=time.time)
    assert shared.rate is None
    shared.announced(300.0)
    assert shared.rate == 300.0 and limiter.current_rate_limit == 300.0
    shared.announced(600.0)  # the quota doubled: the shared rate follows at once
    assert limiter.current_rate_limit == 600.0
    local = LocalQuota(QuotaLearner(clock=clock), clock=clock)
    local.announced(300.0)
    assert local.rate is None  # nothing learnt here: the whole quota is not this worker's
    served(local.learner, clock, 100, 3)
    local.episode(time.time() + 1.0, 1.0)
    assert local.rate == pytest.approx(90.0)
    local.announced(50.0)  # below what it keeps to: a cap
    assert local.rate == 50.0


async def test_a_worker_that_called_nothing_before_an_episode_sends_no_rate() -> None:
    # It may not have seen the quota just announced; the owner keeps the last rate sent, and an
    # idle worker's stale 270/s once overrode the others' 135/s for the rest of a run.
    clock = FakeClock()
    limiter = TokenBucketRateLimiter(1000, 20, clock=clock)
    idle = SharedQuota("api", QuotaLearner(clock=clock), limiter, worker="w3", reporter=None,
                       wall_clock=time.time, settle=0.01)
    idle.announced(300.0)
    until = time.time() + 1.0
    idle.episode(until, 1.0)  # served nothing here
    idle.report("w1", until, 150.0)
    await asyncio.sleep(0.05)
    assert idle.rate is not None  # it learnt from the episode...
    assert limiter.current_rate_limit == 300.0  # ...but sent nothing to the owner


async def test_a_learnt_quota_sends_the_burst_that_goes_with_each_new_rate() -> None:
    clock = FakeClock()
    limiter = DistributedRateLimiter("downstream-api", 1000, learnt_quota_burst(0.0),
                                     worker_id="w1", clock=clock, wall_clock=clock)
    shared = SharedQuota("api", QuotaLearner(clock=clock), limiter, worker="w1",
                         reporter=None, wall_clock=time.time, burst_of=learnt_quota_burst)
    shared.announced(60.0)
    command = limiter.poll()
    assert isinstance(command, Command) and (command.rate, command.burst) == (60.0, 6.0)
    assert limiter.max_tokens == 6.0
    shared.announced(300.0)  # 2 x 50 ms of the rate: what the workers' local caps need
    assert limiter.max_tokens == pytest.approx(30.0)
    # a limiter that is not the quota's own (or not distributed) keeps its burst
    bucket = TokenBucketRateLimiter(1000, 20, clock=clock)
    SharedQuota("api", QuotaLearner(clock=clock), bucket, worker="w1", reporter=None,
                wall_clock=time.time, burst_of=learnt_quota_burst).announced(60.0)
    assert bucket.max_tokens == 20 and bucket.current_rate_limit == 60.0


class _CountingRestarts(DistributedRateLimiter):
    restarts = 0

    def restart_demand(self) -> None:
        self.restarts += 1
        super().restart_demand()


async def _settled(quota: SharedQuota) -> None:
    """Until the episodes' settle tasks are done (their end, not a fixed sleep)."""
    await asyncio.wait_for(quota._background.join(), timeout=5.0)
    assert not len(quota._background), "the episode did not settle"


async def test_calls_resuming_after_a_pause_or_an_outage_restart_the_limiters_demand() -> None:
    clock, wall = FakeClock(), FakeClock(1.7e9)
    learner = QuotaLearner(clock=clock)
    limiter = _CountingRestarts("downstream-api", 1000, 6, worker_id="w1", clock=clock)
    quota = SharedQuota("api", learner, limiter, worker="w1", reporter=None,
                        wall_clock=wall, settle=0.01)
    served(learner, clock, 300, 2)
    quota.episode(wall() + 1.0, 1.0)
    quota.started()  # in the pause (a probe): not yet
    assert limiter.restarts == 0
    await _settled(quota)
    wall.advance(1.0)  # the pause is over
    quota.started()
    quota.started()
    assert limiter.restarts == 1  # once, at the first call after the pause
    quota.recovered()  # an outage's end: its probes were all the demand
    assert limiter.restarts == 2


async def test_a_slow_down_after_the_episodes_pause_is_news() -> None:
    """Every worker keeps a new rate from the moment it sets it (its share and the owner's
    reservations are cut at once): only 429s inside the episode's pause are held."""
    clock, wall = FakeClock(), FakeClock(1.7e9)
    learner = QuotaLearner(clock=clock)
    quota = SharedQuota("api", learner, TokenBucketRateLimiter(1000, 20, clock=clock),
                        worker="w1", reporter=None, wall_clock=wall, settle=0.01)
    served(learner, clock, 300, 3)
    quota.episode(wall() + 1.0, 1.0)
    await _settled(quota)  # settled inside the pause
    assert quota.rate == pytest.approx(270.0)
    wall.advance(0.5)
    assert "still spreading" in quota.episode(wall() + 1.0, 1.0)
    wall.advance(1.5)  # both pauses are over
    clock.advance(1.5)
    served(learner, clock, 270, 1)
    assert "served here" in quota.episode(wall() + 1.0, 1.0)
    await _settled(quota)
    assert quota.rate is not None and quota.rate < 270.0


async def test_a_lower_rate_the_owner_kept_from_another_worker_is_climbed_on_from() -> None:
    """The owner keeps the last rate sent. Learners climb apart, and through an outage each
    climbs to its ceiling without sending: a worker takes the owner's lower rate and climbs
    on from it (sending its steps), rather than leaving it in force (27 s in a bench round,
    docs/downstream.md); a higher one it leaves to the worker that sent it."""
    clock, wall = FakeClock(), FakeClock(1.7e9)
    learner = QuotaLearner(clock=clock)
    limiter = TokenBucketRateLimiter(1000, 20, clock=clock)
    quota = SharedQuota("api", learner, limiter, worker="w1", reporter=None,
                        wall_clock=wall, settle=0.01)
    served(learner, clock, 300, 3)
    quota.episode(wall() + 1.0, 1.0)
    await _settled(quota)
    assert quota.rate == pytest.approx(270.0)
    limiter.update_rate_limit(290.0)  # another worker climbed further: left as it is
    clock.advance(0.1)
    quota.succeeded()
    assert (quota.rate, limiter.current_rate_limit) == (pytest.approx(270.0), 290.0)
    limiter.update_rate_limit(233.0)  # another worker's lower one, the last the owner got
    clock.advance(0.1)
    quota.succeeded()
    assert quota.rate == pytest.approx(233.0)
    clock.advance(1.0)  # the episode's pause is over
    for _ in range(240):  # its next step climbs from there, and is sent
        quota.started()
        clock.advance(1 / 240)
        quota.succeeded()
    assert quota.rate is not None and 233.0 < quota.rate < 270.0
    assert limiter.current_rate_limit == pytest.approx(quota.rate)
