"""An outage's calls are bounded by the breaker's probe budget, not by timing (issue 22).

A caller that calls whenever the breaker allows, on a virtual clock; the breaker as
``bp.downstream`` builds it (wait 1.25 s x [0.8, 1.2], 2 sequential probes, 1 probe/s),
its jitter drawn at the shortest wait: the worst case.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from faust_backpressure.limiters import BreakerState, CircuitBreaker

from .conftest import FakeClock

CALL = 0.005  # each call's answer time
STEP = 0.01  # the caller looks again this often when refused


def guard_breaker(clock: FakeClock, probe_rate: float = 1.0, draw: float = 0.0
                  ) -> CircuitBreaker:
    """``draw``: the jitter's draw (0: the shortest wait, 1 s; 1: the longest, 1.5 s)."""
    return CircuitBreaker(window=2.0, minimum_calls=10, wait_in_open=1.25, open_jitter=0.2,
                          half_open_calls=2, sequential_probes=True, probe_rate=probe_rate,
                          clock=clock, rng=lambda: draw)


def open_by_failures(cb: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(10):
        assert cb.allow()
        clock.advance(CALL)
        cb.record(CALL, failed=True)
    assert cb.state is BreakerState.OPEN


def drive(cb: CircuitBreaker, clock: FakeClock, answer: Callable[[int], str], seconds: float,
          *, news_every: float | None = None, stop_closed: bool = True) -> list[float]:
    """Calls whenever the breaker allows for ``seconds``: when each was sent. ``answer(n)``
    for the n-th call: "ok", "fail" or "slow_down" (a 503 with Retry-After 0.2 s: not a
    failure, then a pause). ``news_every``: recovery news that often (probe_soon(0.5))."""
    sent: list[float] = []
    end, news = clock.now + seconds, clock.now
    while clock.now < end:
        if news_every is not None and clock.now >= news:
            cb.probe_soon(0.5)
            news += news_every
        if stop_closed and cb.state is BreakerState.CLOSED:
            break
        if not cb.allow():
            clock.advance(STEP)
            continue
        sent.append(clock.now)
        outcome = answer(len(sent))
        clock.advance(CALL)
        cb.record(CALL, failed=outcome == "fail")
        if outcome == "slow_down":
            cb.open_for(0.2)
    return sent


SCENARIOS: dict[str, tuple[Callable[[int], str], float | None]] = {
    "every call fails": (lambda n: "fail", None),
    "each round's first probe passes": (lambda n: "ok" if n % 2 else "fail", None),
    "recovery news every 0.1 s": (lambda n: "fail", 0.1),
    "503s with Retry-After 0.2 s": (lambda n: "slow_down", None),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_an_outage_of_60_s_costs_at_most_60_calls(clock: FakeClock, scenario: str) -> None:
    answer, news = SCENARIOS[scenario]
    cb = guard_breaker(clock)
    open_by_failures(cb, clock)
    sent = drive(cb, clock, answer, 60.0, news_every=news, stop_closed=False)
    assert len(sent) <= 60, scenario
    # and in every 10 s of it, at most 10 (+ the budget's 2 probes saved)
    for start in range(0, 60, 5):
        window = [t for t in sent if sent[0] - CALL + start <= t < sent[0] + start + 10]
        assert len(window) <= 12, (scenario, start)


def test_without_a_probe_budget_the_same_outages_cost_more(clock: FakeClock) -> None:
    """What the budget bounds: rounds alone give up to 2 calls per shortest wait."""
    for scenario in list(SCENARIOS)[1:]:
        answer, news = SCENARIOS[scenario]
        cb = guard_breaker(clock, probe_rate=float("inf"))
        open_by_failures(cb, clock)
        assert len(drive(cb, clock, answer, 60.0, news_every=news, stop_closed=False)) > 100
        cb.release()


def test_after_a_long_outage_the_breaker_closes_at_its_next_round(clock: FakeClock) -> None:
    cb = guard_breaker(clock, draw=1.0)  # the longest wait, 1.5 s
    open_by_failures(cb, clock)
    drive(cb, clock, lambda n: "fail", 60.0, stop_closed=False)
    back = clock.now  # the system answers again
    drive(cb, clock, lambda n: "ok", 10.0)
    assert cb.state is BreakerState.CLOSED and clock.now - back <= 1.5 + 3 * CALL


def test_a_blip_shorter_than_the_wait_costs_at_most_one_probe_period(clock: FakeClock) -> None:
    cb = guard_breaker(clock)
    open_by_failures(cb, clock)  # the failures spent the budget: it refills at 1/s
    opened = clock.now
    drive(cb, clock, lambda n: "ok", 10.0)
    assert cb.state is BreakerState.CLOSED and clock.now - opened <= 2.0 + 2 * STEP


def test_an_abandoned_probe_gives_its_budget_back_and_stale_abandons_do_nothing(
        clock: FakeClock) -> None:
    cb = guard_breaker(clock)
    open_by_failures(cb, clock)
    clock.advance(1.0)
    assert cb.allow() and cb.state is BreakerState.HALF_OPEN
    epoch = cb.epoch
    cb.abandon(epoch)  # never called: its probe and its token come back
    assert cb.allow()
    clock.advance(CALL)
    cb.record(CALL, failed=True)  # open again: a new epoch
    clock.advance(1.0)
    assert cb.allow()
    cb.abandon(epoch)  # from the earlier round: nothing freed
    assert not cb.allow() and cb.time_until_allowed() == float("inf")
    with pytest.raises(ValueError, match="probe_rate"):
        CircuitBreaker(probe_rate=0)


def test_slow_downs_in_quick_succession_find_their_probes(clock: FakeClock) -> None:
    # a run's first seconds: a 1 s pause every ~1.3 s while the quota is learnt; a bucket of
    # one round held the second probe ~0.6 s each time, and the stream with it
    cb = guard_breaker(clock)
    for _ in range(3):
        cb.open_for(1.0)
        clock.advance(1.0)
        for _ in range(2):
            assert cb.allow()
            clock.advance(CALL)
            cb.record(CALL, failed=False)
        assert cb.state is BreakerState.CLOSED
        clock.advance(0.3)


def test_an_outage_met_after_a_slow_down_is_bounded_from_its_first_failure(
        clock: FakeClock) -> None:
    cb = guard_breaker(clock)
    cb.open_for(1.0)  # a slow-down: the budget untouched (4 probes saved)
    clock.advance(1.0)
    assert cb.allow()
    clock.advance(CALL)
    cb.record(CALL, failed=True)  # the outage began during the pause: the budget is spent
    sent = drive(cb, clock, lambda n: "ok" if n % 2 else "fail", 60.0, stop_closed=False)
    assert len(sent) <= 60


# -- failures seen elsewhere (outage news): trip() -----------------------------------------

def test_a_trip_opens_a_closed_breaker_as_its_own_failures_would(clock: FakeClock) -> None:
    cb = guard_breaker(clock, draw=1.0)  # its own wait: the longest, 1.5 s
    assert cb.trip() and cb.state is BreakerState.OPEN and cb.failing
    assert cb.time_until_allowed() == pytest.approx(1.5)
    assert not cb.trip()  # already failing: nothing more
    clock.advance(1.5)
    assert cb.allow()  # the budget refilled over the wait: one probe
    clock.advance(CALL)
    cb.record(CALL, failed=True)
    sent = drive(cb, clock, lambda n: "fail", 60.0, stop_closed=False)
    assert len(sent) <= 60  # bounded from the news on, as from its own first failures


def test_a_trip_ends_a_half_open_round_and_holds_its_probes(clock: FakeClock) -> None:
    cb = guard_breaker(clock)
    cb.open_for(1.0)  # a slow-down, then half-open
    clock.advance(1.0)
    assert cb.allow() and cb.state is BreakerState.HALF_OPEN
    epoch = cb.epoch
    assert cb.trip() and cb.state is BreakerState.OPEN
    assert cb.epoch != epoch  # the probe let out under that epoch must not go
    clock.advance(CALL)
    cb.record(CALL, failed=False)  # its answer, had it gone: not a probe of anything now
    assert cb.state is BreakerState.OPEN


def test_a_trip_during_a_slow_downs_pause_keeps_its_end_and_spends_the_budget(
        clock: FakeClock) -> None:
    cb = guard_breaker(clock)
    cb.open_for(0.5)  # a 429's pause: not a failure
    assert not cb.failing
    assert cb.trip() and cb.failing and cb.state is BreakerState.OPEN
    assert cb.time_until_allowed() == pytest.approx(0.5)  # the pause's end, not a new wait
    clock.advance(0.5)
    assert cb.state is BreakerState.HALF_OPEN
    assert not cb.allow()  # an empty budget: the half-open lets out one probe per second
    clock.advance(1.0)
    assert cb.allow()


def test_a_trip_changes_nothing_under_an_operators_state_and_release_forgets_it(
        clock: FakeClock) -> None:
    cb = guard_breaker(clock)
    for force in (cb.force_open, cb.force_close):
        force()
        state = cb.state
        assert not cb.trip() and cb.state is state and not cb.failing
    cb.trip()  # forced closed: ignored, not remembered
    cb.release()
    assert cb.state is BreakerState.CLOSED and not cb.failing
    assert cb.allow()
