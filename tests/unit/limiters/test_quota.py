"""Learning an unannounced quota from slow-downs, on a virtual clock: a simulated service that
serves at most ``quota`` calls per second and slows callers down above it."""

from __future__ import annotations

import math

import pytest

from faust_backpressure.limiters.quota import QuotaLearner

from .conftest import FakeClock


def serve(learner: QuotaLearner, clock: FakeClock, quota: float, seconds: float,
          pause: float = 1.0) -> list[float]:
    """Call at the learner's rate (unlimited: 10 x quota) for ``seconds``; a second that
    exceeds ``quota`` is a slow-down and a ``pause`` with nothing served. Served per second."""
    served: list[float] = []
    end = clock.now + seconds
    while clock.now < end:
        rate = min(learner.rate, 10 * quota)
        if rate > quota * 1.0001:  # over the quota: some calls slowed down
            for _ in range(int(quota)):
                learner.started()
                learner.succeeded()
                clock.advance(1 / rate)
            learner.slowed_down(pause)
            served.append(quota)
            clock.advance(pause)
            served.extend([0.0] * int(pause))
            continue
        for _ in range(max(1, int(rate))):
            learner.started()
            learner.succeeded()
            clock.advance(1 / rate)
        served.append(rate)
    return served


def test_no_limit_until_the_first_slow_down_then_the_served_rate_less_a_margin(
        clock: FakeClock) -> None:
    learner = QuotaLearner(clock=clock)
    assert learner.rate == math.inf and learner.succeeded() is None
    for _ in range(300):  # 300 served in 1 s
        learner.succeeded()
        clock.advance(1 / 300)
    assert learner.slowed_down() == pytest.approx(0.9 * 300, rel=0.01)
    assert learner.ceiling == pytest.approx(300, rel=0.01)


def test_a_steady_quota_is_held_with_rare_slow_downs(clock: FakeClock) -> None:
    learner = QuotaLearner(clock=clock)
    served = serve(learner, clock, quota=300, seconds=300)
    steady = served[30:]
    mean = sum(steady) / len(steady)
    pauses = sum(1 for s in steady if s == 0)
    # The sawtooth (back off to 0.9, climb back) and a pause per probe cost ~5% (the
    # simulation gives 95.0%); probing above the ceiling is rare (every ~40 s).
    assert mean >= 0.93 * 300, mean
    assert pauses <= len(steady) / 30, pauses


def test_a_halved_quota_is_found_in_a_few_steps_and_a_doubled_one_in_time(
        clock: FakeClock) -> None:
    learner = QuotaLearner(clock=clock)
    serve(learner, clock, quota=300, seconds=60)
    halved = serve(learner, clock, quota=150, seconds=30)
    first_fit = next(i for i, s in enumerate(halved) if 0 < s <= 150 * 1.0001
                     and all(0 <= x <= 150.02 for x in halved[i:i + 3]))
    assert first_fit <= 8, halved[:12]  # fast backoff: 0.9, then 0.7 per recent slow-down
    doubled = serve(learner, clock, quota=600, seconds=120)
    # probing starts after probe_after (30 s) near the ceiling, a bit more each second
    assert next(i for i, s in enumerate(doubled) if s >= 0.9 * 600) <= 60


def test_a_burst_refused_at_once_bounds_the_first_ceiling_by_what_was_attempted(
        clock: FakeClock) -> None:
    learner = QuotaLearner(clock=clock)
    for _ in range(20):  # 20 calls in 50 ms, none served yet
        learner.started()
    clock.advance(0.05)
    assert learner.slowed_down(pause=1.0) == pytest.approx(0.9 * 400)
    fresh = QuotaLearner(clock=clock)
    assert fresh.slowed_down() == math.inf  # nothing attempted here: no limit to learn


def test_a_first_reading_from_part_of_an_interval_is_an_upper_bound_refined_later(
        clock: FakeClock) -> None:
    # The benchmark's first 429 came in the run's first second: the system's own burst read
    # 447-596/s for a quota of 300. Such a reading must not become the rate as if measured.
    learner = QuotaLearner(clock=clock)
    for _ in range(30):  # the system's burst of 30 at once...
        learner.started()
        learner.succeeded()
    for _ in range(150):  # ...then 300/s for half a second, and a 429
        learner.started()
        clock.advance(1 / 300)
        learner.succeeded()
    assert not learner.whole
    assert learner.slowed_down(pause=1.0) == pytest.approx(0.9 * 360, rel=0.02)
    assert learner.bounded and learner.ceiling == pytest.approx(360, rel=0.02)
    clock.advance(1.0)
    for _ in range(910):  # the pause's ramp (two seconds), a whole second at the quota, a 429
        learner.started()
        clock.advance(1 / 300)
        learner.succeeded()
    assert learner.whole
    # a better measurement, not a second loss: 0.9 x 300, not the recent 0.7 x 300
    assert learner.slowed_down(pause=1.0) == pytest.approx(0.9 * 300, rel=0.02)
    assert not learner.bounded and learner.ceiling == pytest.approx(300, rel=0.02)


def test_a_reading_at_or_above_a_bounded_rate_backs_off_as_a_first_loss(
        clock: FakeClock) -> None:
    # After an outage the first 429 read 447-596/s for a quota of 300 (a bound); the next, a
    # second after, read part of an interval again, at the rate: 0.8x of it left 233-267/s.
    learner = QuotaLearner(fast_backoff=0.8, clock=clock)
    for _ in range(30):  # the system's burst, then 300/s for a third of a second: a bound
        learner.started()
        learner.succeeded()
    for _ in range(100):
        learner.started()
        clock.advance(1 / 300)
        learner.succeeded()
    bound_rate = learner.slowed_down(pause=1.0)
    assert learner.bounded and bound_rate > 300
    clock.advance(1.0)
    for _ in range(int(bound_rate / 3)):  # a third of a second at the rate, then a 429
        learner.started()
        clock.advance(1 / bound_rate)
        learner.succeeded()
    assert not learner.whole and learner.observed() >= 0.99 * learner.rate
    assert learner.slowed_down(pause=1.0) == pytest.approx(0.9 * bound_rate, rel=0.01)
    assert learner.bounded  # still a bound: read over part of an interval again


def test_a_quiet_start_does_not_dilute_the_first_ceiling(clock: FakeClock) -> None:
    learner = QuotaLearner(clock=clock)
    clock.advance(30)  # a worker started, nothing to call for 30 s
    for _ in range(150):  # then 300/s for half a second, and a slow-down
        learner.started()
        learner.succeeded()
        clock.advance(1 / 300)
    assert learner.slowed_down(pause=1.0) == pytest.approx(0.9 * 300, rel=0.02)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="backoff"):
        QuotaLearner(backoff=1.5)
    with pytest.raises(ValueError, match="interval"):
        QuotaLearner(interval=0)
    assert QuotaLearner(max_rate=50).rate == 50


def test_a_pause_that_changes_no_rate_restarts_what_is_measured(clock: FakeClock) -> None:
    learner = QuotaLearner(clock=clock)
    for _ in range(300):  # one whole second at 300/s
        learner.started()
        clock.advance(1 / 300)
        learner.succeeded()
    assert learner.observed() == pytest.approx(300, rel=0.01)
    learner.paused(1.0)
    assert learner.observed() == 0  # nothing measured since: no stale figure
    assert learner.rate == math.inf
    clock.advance(1.0)
    for _ in range(100):  # half a second at 200/s after the pause
        learner.started()
        clock.advance(1 / 200)
        learner.succeeded()
    assert learner.observed() == pytest.approx(200, rel=0.01)


def test_an_announced_quota_is_kept_to_at_once_up_and_down_and_never_probed_above() -> None:
    clock = FakeClock()
    learner = QuotaLearner(clock=clock, probe_after=5.0)
    assert learner.announced(300.0) == 300.0
    assert learner.announced(301.0) is None  # the same quota again (within 1%): nothing
    assert learner.announced(150.0) == 150.0  # halved: at once
    assert learner.announced(600.0) == 600.0  # doubled: at once, no probing needed
    served = serve(learner, clock, 600.0, 60.0)
    assert learner.rate <= 600.0 and max(served) <= 600.0  # 60 s near it: no probe above
    learner.slowed_down(1.0, ceiling=170.0)  # a lone 429 under it: a burst, not a new quota
    assert learner.ceiling == 600.0 and learner.rate == pytest.approx(540.0)
    clock.advance(1.0)
    _calls(learner, clock, learner.rate, 3.1)  # the pause's ramp, then a whole interval
    learner.slowed_down(1.0, ceiling=400.0)  # another soon after: others share it, back off
    assert learner.ceiling == 400.0 and learner.rate == pytest.approx(400.0 * 0.7)
    assert learner.announced(600.0) is None  # unchanged: the learner climbs back itself
    with pytest.raises(ValueError, match="quota"):
        learner.announced(0.0)


def _calls(learner: QuotaLearner, clock: FakeClock, per_second: float, seconds: float) -> None:
    for _ in range(round(per_second * seconds)):
        learner.started()
        clock.advance(1 / per_second)
        learner.succeeded()


def _learnt_270(clock: FakeClock) -> QuotaLearner:
    learner = QuotaLearner(clock=clock)
    _calls(learner, clock, 300, 2.0)
    assert learner.slowed_down(pause=1.0) == pytest.approx(270, rel=0.01)
    clock.advance(1.0 + 6.0)  # the pause, then a 6 s outage
    return learner


def test_the_first_interval_after_an_outage_is_read_as_a_ramp_not_the_quota(
        clock: FakeClock) -> None:
    # a 429 right after an outage read what the restart served in its first second (112/s
    # and 204/s of a 300/s quota) and kept to it: those rounds never got back to 90 %
    learner = _learnt_270(clock)
    learner.restarted()
    _calls(learner, clock, 112, 1.2)  # the ramp: a whole interval, but the restart's
    assert not learner.whole and learner.observed() == pytest.approx(112, rel=0.02)
    before = learner.rate  # 270, or a step above it: it climbs on successes
    assert learner.slowed_down(pause=1.0) == pytest.approx(0.9 * before)  # a loss at it
    assert not learner.bounded  # the ceiling was a measurement, and stays one
    clock.advance(1.0)
    _calls(learner, clock, 200, 3.5)  # after the 429's pause and its ramp: measured as usual
    assert learner.whole


def test_the_ramp_is_two_intervals_and_the_next_is_whole(clock: FakeClock) -> None:
    learner = _learnt_270(clock)
    learner.restarted()
    _calls(learner, clock, 112, 1.2)
    _calls(learner, clock, 130, 1.0)  # the second interval: a new split still spreading
    assert not learner.whole
    _calls(learner, clock, 150, 1.2)  # the third
    reading = learner.observed()
    assert learner.whole and 130 < reading <= 150.1
    assert reading < 0.99 * learner.rate
    assert learner.slowed_down(pause=1.0) == pytest.approx(0.9 * reading)  # measured


def test_a_ramp_reading_at_the_rate_or_with_no_rate_yet_counts_as_usual(
        clock: FakeClock) -> None:
    learner = _learnt_270(clock)
    learner.restarted()
    before = learner.rate  # 270, climbed through the outage as if served
    _calls(learner, clock, 400, 0.6)  # over the rate already: part of an interval, a bound
    assert learner.slowed_down(pause=1.0) == pytest.approx(0.9 * before, rel=0.01)
    assert learner.bounded
    fresh = QuotaLearner(clock=clock)  # nothing learnt before the outage: learn from it
    fresh.restarted()
    _calls(fresh, clock, 100, 0.6)
    assert fresh.slowed_down(pause=1.0) == pytest.approx(90, rel=0.02) and fresh.bounded


def _bounded_at_378(clock: FakeClock) -> QuotaLearner:
    """The bench's first seconds (20 s outage, round 3): readings from parts of intervals,
    a bound of 420/s, then a loss at it: 378/s, still a bound."""
    learner = QuotaLearner(clock=clock)
    _calls(learner, clock, 400, 0.5)
    assert learner.slowed_down(1.0, ceiling=466.3, whole=False) == pytest.approx(419.7, 0.01)
    clock.advance(1.0)
    _calls(learner, clock, 419.7, 0.3)
    assert learner.slowed_down(1.0, ceiling=463.8, whole=False) == pytest.approx(377.7, 0.01)
    assert learner.bounded
    clock.advance(1.0)
    return learner


def _starved_second(learner: QuotaLearner, clock: FakeClock) -> None:
    """The first second after the pause: a few calls, no permit for 0.7 s (the shared
    limiter's new leases), then the rate; 0.7 s more of it, and a 429."""
    _calls(learner, clock, 400, 0.05)
    clock.advance(0.7)
    _calls(learner, clock, learner.rate, 0.95)


@pytest.mark.parametrize("shared", [False, True])
def test_a_starved_first_interval_after_a_pause_is_a_ramp_not_the_quota(
        clock: FakeClock, shared: bool) -> None:
    # 214/s in all read over that second, at a rate of 388/s, was learnt as the quota
    # (300/s): after the outage that came next the guard kept to 214/s for 48 s
    learner = _bounded_at_378(clock)
    _starved_second(learner, clock)
    assert not learner.whole and learner.observed() < 0.5 * learner.rate
    before = learner.rate  # 378, or a step above it
    # shared: the sum of every worker's reading, each from its ramp (as SharedQuota passes)
    reading = {"ceiling": 213.7, "whole": False} if shared else {}
    assert learner.slowed_down(1.0, **reading) == pytest.approx(0.7 * before)  # a loss at it
    assert learner.ceiling == pytest.approx(before) and learner.bounded


def test_after_a_starved_second_and_an_outage_the_quota_is_back_within_5_s(
        clock: FakeClock) -> None:
    learner = _bounded_at_378(clock)
    _starved_second(learner, clock)
    learner.slowed_down(pause=1.0)
    clock.advance(1.0 + 20.0)  # the pause, then the 20 s outage
    learner.restarted()
    served = serve(learner, clock, quota=300, seconds=5)
    assert max(served) >= 0.9 * 300, served


def test_a_total_with_any_workers_ramp_in_it_is_a_loss_at_the_rate_on_every_worker(
        clock: FakeClock) -> None:
    # After the 20 s outage one worker was still in its restart's first interval, two were
    # past it with stale lease shares: 171/s in all. The first backed off from the rate
    # (249/s), the two from 171/s (154/s), and the last rate sent (154/s) held for 50 s.
    learner = _learnt_270(clock)
    learner.restarted()
    _calls(learner, clock, 170, 3.5)  # this worker: past its ramp, a whole interval
    assert learner.whole
    before = learner.rate
    assert learner.slowed_down(1.0, ceiling=170.8, whole=False) == pytest.approx(0.9 * before)
    assert learner.ceiling == pytest.approx(before)


def test_a_reading_is_the_best_of_the_last_whole_intervals(clock: FakeClock) -> None:
    # one worker's lease renewed late: 38/s in one second of its 100/s, and the total read
    # 250/s of a 300/s quota, learnt for 50 s
    learner = _learnt_270(clock)
    learner.restarted()
    _calls(learner, clock, 100, 1.0)  # the ramp
    _calls(learner, clock, 100, 2.0)
    _calls(learner, clock, 38, 1.1)  # starved
    assert learner.whole and learner.observed() == pytest.approx(100, rel=0.02)
    _calls(learner, clock, 60, 3.1)  # three whole seconds since: the best of them
    assert learner.observed() == pytest.approx(60, rel=0.02)
    learner.paused(1.0)  # measured afresh after a pause: none of them
    assert learner.observed() == 0


def test_an_idle_caller_settles_each_episode_where_the_callers_do(clock: FakeClock) -> None:
    # One worker ran out of events: it settled every episode from the others' reports and,
    # never climbing, its learnt rate fell 0.9x an episode (160/s of 300 after five); it
    # sent none of them, but it started from there when it got busy again.
    busy, idle = QuotaLearner(clock=clock), QuotaLearner(clock=clock)
    _calls(busy, clock, 300, 2.0)
    for _ in range(5):
        total, whole = busy.observed(), busy.whole  # the idle one reports 0/s
        for learner in (busy, idle):
            learner.slowed_down(1.0, ceiling=total, whole=whole)
        assert idle.rate == pytest.approx(busy.rate, rel=0.01)
        assert idle.ceiling == pytest.approx(busy.ceiling, rel=0.01)
        clock.advance(1.0)
        for _ in range(8):  # eight seconds at the rate, climbing, then the next 429
            _calls(busy, clock, busy.rate, 1.0)
    assert busy.rate > 0.95 * busy.ceiling
    _calls(idle, clock, 10, 0.5)  # busy again: from where the callers climbed to
    assert idle.rate == pytest.approx(busy.rate, rel=0.01)


def test_an_idle_caller_does_not_probe_above_the_ceiling(clock: FakeClock) -> None:
    learner = _learnt_270(clock)
    clock.advance(600.0)  # ten minutes with nothing to call
    _calls(learner, clock, 10, 0.2)
    assert 0.99 * 300 <= learner.rate <= 300  # climbed to the ceiling, not above it


def test_the_second_interval_after_a_pause_is_read_as_the_ramp_too(clock: FakeClock) -> None:
    # The 20 s outage bench's 50 s round: the rate went 415 -> 332/s (from a bound), and for
    # 2 s after the pause the workers' lease shares stayed at 54/s each before the owner's
    # new split reached them; the 429 after read that second interval (230/s in all) as
    # whole: the quota was 230/s, the rate 207/s, kept to after the outage for 50 s.
    learner = QuotaLearner(fast_backoff=0.8, clock=clock)  # as the guard makes it
    _calls(learner, clock, 400, 0.5)
    learner.slowed_down(1.0, ceiling=461.0, whole=False)  # the run's first burst: a bound
    clock.advance(1.0)
    _calls(learner, clock, 200, 0.5)
    # 415 -> 332/s in that round (0.8x); a loss at the rate soon after another is 0.7x now
    assert learner.slowed_down(1.0, ceiling=200.0, whole=False) == pytest.approx(290.4, 0.01)
    clock.advance(1.0)
    _calls(learner, clock, 162, 1.0)  # the ramp: the old lease shares
    _calls(learner, clock, 230, 1.1)  # the second interval: the new split on its way
    assert not learner.whole
    before = learner.rate  # 290, climbed two steps
    assert learner.slowed_down(1.0, ceiling=230.0, whole=learner.whole) == pytest.approx(
        0.7 * before)  # a loss at the rate again (recent: 0.7x), not a quota of 230/s
    assert learner.bounded and learner.ceiling == pytest.approx(before) and before > 300
    clock.advance(1.0 + 20.0)  # the pause, then the 20 s outage
    learner.restarted()
    served = serve(learner, clock, quota=300, seconds=5)
    assert max(served) >= 0.9 * 300, served


def test_a_loss_at_the_rate_soon_after_one_read_whole_is_a_steeper_step(
        clock: FakeClock) -> None:
    # The unannounced halving at 30,000 events: after the first episode (300/s read whole,
    # 270/s), each pause's burst was gone in 0.1-0.3 s and the next 429 came in the pause's
    # ramp; 0.8x a step (with the hold between) took 20 s to reach the halved quota.
    learner = QuotaLearner(fast_backoff=0.8, clock=clock)  # as the guard makes it
    _calls(learner, clock, 300, 3.0)
    assert learner.slowed_down(1.0) == pytest.approx(270, rel=0.01)
    clock.advance(1.0)
    _calls(learner, clock, 270, 0.2)  # the ramp: 54 calls, then a 429
    assert learner.slowed_down(1.0) == pytest.approx(0.7 * 270, rel=0.01)
    assert learner.ceiling == pytest.approx(270, rel=0.01)
    clock.advance(1.0)
    _calls(learner, clock, 189, 0.2)
    assert learner.slowed_down(1.0) == pytest.approx(0.7 * 0.7 * 270, rel=0.01)  # 132/s
    later = QuotaLearner(fast_backoff=0.8, clock=clock)  # the same, the 429 6 s later
    _calls(later, clock, 300, 3.0)
    later.slowed_down(1.0)
    clock.advance(6.0)
    _calls(later, clock, 270, 0.2)
    before = later.rate  # climbed in the quiet 6 s
    assert later.slowed_down(1.0) == pytest.approx(0.9 * before)  # the usual step
