"""CircuitBreaker on a virtual clock; waiting on an event loop with virtual time."""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from faust_backpressure.limiters import (
    BreakerState,
    CircuitBreaker,
    CircuitOpenTimeout,
    RateLimitTimeout,
)

from .conftest import FakeClock

T = TypeVar("T")
S = BreakerState


# -- an event loop whose clock jumps to the next timer (no real sleeping) ----------------------


class _VirtualSelector(selectors.SelectSelector):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("deadlock: the loop would wait forever")
        self.now += max(0.0, timeout)
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``time()`` is virtual: when idle the loop jumps straight to its next timer."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_virtual(main: Callable[[VirtualTimeLoop], Awaitable[T]]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


# -- helpers -------------------------------------------------------------------------------------


def make(clock: FakeClock, **kw: Any) -> CircuitBreaker:
    kw.setdefault("minimum_calls", 10)
    return CircuitBreaker(clock=clock, **kw)


def record_many(cb: CircuitBreaker, clock: FakeClock, failed: int, ok: int,
                duration: float = 0.1) -> None:
    for i in range(failed + ok):
        clock.advance(0.01)
        cb.record(duration, failed=i < failed)


def open_breaker(cb: CircuitBreaker, clock: FakeClock) -> None:
    record_many(cb, clock, failed=cb.minimum_calls, ok=0)
    assert cb.state is S.OPEN


def to_half_open(cb: CircuitBreaker, clock: FakeClock) -> None:
    open_breaker(cb, clock)
    clock.advance(cb.wait_in_open)
    assert cb.state is S.HALF_OPEN


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("arg", "value"), [
    ("failure_rate_threshold", 0), ("failure_rate_threshold", 1.5),
    ("slow_call_rate_threshold", -0.1), ("slow_call_duration", -1), ("window", 0),
    ("buckets", 0), ("minimum_calls", 0), ("wait_in_open", math.nan),
    ("half_open_calls", 0), ("half_open_calls", True),
])
def test_bad_arguments_name_the_argument(arg: str, value: object) -> None:
    with pytest.raises(ValueError, match=arg):
        CircuitBreaker(**{arg: value})


def test_state_is_a_str_enum() -> None:
    assert S.HALF_OPEN == "half_open"
    assert CircuitBreaker().state is S.CLOSED


# -- closed: the sliding window --------------------------------------------------------------


def test_opens_on_failure_rate_only_after_minimum_calls(clock: FakeClock) -> None:
    cb = make(clock)
    record_many(cb, clock, failed=9, ok=0)
    assert cb.state is S.CLOSED and cb.allow()
    cb.record(0.1, failed=True)
    assert cb.state is S.OPEN
    assert not cb.allow()
    s = cb.stats()
    assert (s.calls, s.failure_rate, s.opened) == (10, 1.0, 1)


def test_failure_rate_under_threshold_stays_closed(clock: FakeClock) -> None:
    cb = make(clock)
    record_many(cb, clock, failed=4, ok=6)
    record_many(cb, clock, failed=0, ok=20)
    assert cb.state is S.CLOSED
    assert cb.stats().failure_rate == pytest.approx(4 / 30)


def test_failure_rate_at_threshold_opens(clock: FakeClock) -> None:
    cb = make(clock)
    record_many(cb, clock, failed=0, ok=5)
    record_many(cb, clock, failed=5, ok=0)
    assert cb.state is S.OPEN


def test_old_outcomes_leave_the_window(clock: FakeClock) -> None:
    cb = make(clock, window=10.0)
    record_many(cb, clock, failed=9, ok=0)
    clock.advance(11.0)
    record_many(cb, clock, failed=1, ok=9)
    s = cb.stats()
    assert cb.state is S.CLOSED
    assert (s.calls, s.failure_rate) == (10, 0.1)
    clock.advance(20.0)
    assert cb.stats().calls == 0


def test_window_slides_bucket_by_bucket(clock: FakeClock) -> None:
    cb = make(clock, window=10.0, buckets=10, minimum_calls=100)
    for _ in range(10):
        cb.record(0.1, failed=True)
        clock.advance(1.0)
    assert cb.stats().calls in (9, 10)
    clock.advance(5.0)
    assert 3 <= cb.stats().calls <= 5


def test_slow_call_rate_opens(clock: FakeClock) -> None:
    cb = make(clock, slow_call_rate_threshold=0.5, slow_call_duration=1.0)
    record_many(cb, clock, failed=0, ok=5, duration=0.5)
    record_many(cb, clock, failed=0, ok=4, duration=2.0)
    assert cb.state is S.CLOSED
    cb.record(2.0, failed=False)
    assert cb.state is S.OPEN
    assert cb.stats().slow_call_rate == 0.5


def test_slow_call_check_is_off_by_default(clock: FakeClock) -> None:
    cb = make(clock, slow_call_duration=1.0)
    record_many(cb, clock, failed=0, ok=30, duration=60.0)
    assert cb.state is S.CLOSED
    assert cb.stats().slow_call_rate == 1.0


# -- open, half-open -----------------------------------------------------------------------------


def test_open_refuses_until_wait_in_open_then_half_open(clock: FakeClock) -> None:
    cb = make(clock, wait_in_open=5.0)
    open_breaker(cb, clock)
    assert cb.time_until_allowed() == 5.0
    clock.advance(3.0)
    assert not cb.allow()
    assert cb.time_until_allowed() == pytest.approx(2.0)
    clock.advance(2.0)
    assert cb.time_until_allowed() == 0.0
    assert cb.allow()
    assert cb.state is S.HALF_OPEN


def test_results_while_open_are_ignored(clock: FakeClock) -> None:
    cb = make(clock)
    open_breaker(cb, clock)
    record_many(cb, clock, failed=0, ok=50)
    clock.advance(cb.wait_in_open)
    assert cb.state is S.HALF_OPEN
    assert cb.stats().calls == 0


def test_half_open_allows_a_fixed_number_of_probes(clock: FakeClock) -> None:
    cb = make(clock, half_open_calls=3)
    to_half_open(cb, clock)
    assert [cb.allow() for _ in range(4)] == [True, True, True, False]
    assert cb.time_until_allowed() == math.inf


def test_half_open_closes_when_probes_succeed(clock: FakeClock) -> None:
    cb = make(clock, half_open_calls=3)
    to_half_open(cb, clock)
    for _ in range(3):
        assert cb.allow()
    clock.advance(0.5)
    cb.record(0.2, failed=False)
    cb.record(0.2, failed=True)
    assert cb.state is S.HALF_OPEN  # waits for all probes
    cb.record(0.2, failed=False)  # 1/3 failed < 0.5
    assert cb.state is S.CLOSED
    s = cb.stats()
    assert (s.calls, s.opened) == (0, 1)  # a fresh window


def test_half_open_reopens_when_probes_fail(clock: FakeClock) -> None:
    cb = make(clock, half_open_calls=3, wait_in_open=5.0)
    to_half_open(cb, clock)
    for _ in range(3):
        assert cb.allow()
    clock.advance(0.5)
    cb.record(0.2, failed=True)
    cb.record(0.2, failed=True)
    cb.record(0.2, failed=False)
    assert cb.state is S.OPEN
    assert cb.stats().opened == 2
    assert cb.time_until_allowed() == 5.0


def test_half_open_reopens_on_slow_probes(clock: FakeClock) -> None:
    cb = make(clock, half_open_calls=2, slow_call_rate_threshold=0.5, slow_call_duration=1.0)
    to_half_open(cb, clock)
    assert cb.allow() and cb.allow()
    clock.advance(3.0)
    cb.record(0.1, failed=False)
    cb.record(2.5, failed=False)
    assert cb.state is S.OPEN


def test_calls_started_before_half_open_are_not_probes(clock: FakeClock) -> None:
    cb = make(clock, half_open_calls=1)
    to_half_open(cb, clock)
    assert cb.allow()
    clock.advance(1.0)
    cb.record(30.0, failed=False)  # started long before: an old call, not the probe
    assert cb.state is S.HALF_OPEN
    cb.record(1.0, failed=False)
    assert cb.state is S.CLOSED


def test_more_results_than_probes_are_ignored(clock: FakeClock) -> None:
    cb = make(clock, half_open_calls=2)
    to_half_open(cb, clock)
    assert cb.allow()
    clock.advance(0.5)
    cb.record(0.1, failed=False)
    cb.record(0.1, failed=False)  # no second probe was let through
    assert cb.state is S.HALF_OPEN
    assert cb.stats().calls == 1


def test_abandon_gives_a_probe_back(clock: FakeClock) -> None:
    cb = make(clock, half_open_calls=1)
    to_half_open(cb, clock)
    assert cb.allow() and not cb.allow()
    cb.abandon()
    assert cb.time_until_allowed() == 0.0
    assert cb.allow()


def test_probes_reopen_as_soon_as_the_failures_decide_it(clock: FakeClock) -> None:
    cb = make(clock, half_open_calls=4, wait_in_open=5.0)
    to_half_open(cb, clock)
    assert all(cb.allow() for _ in range(4))
    clock.advance(0.1)
    cb.record(0.05, failed=True)
    assert cb.state is S.HALF_OPEN  # 1 of 4: the rest may still bring it under 0.5
    cb.record(0.05, failed=True)  # 2 of 4 failed: >= 0.5 whatever the other two say
    assert cb.state is S.OPEN and cb.time_until_allowed() == 5.0
    cb.record(0.05, failed=False)  # the late probes are not counted
    assert cb.state is S.OPEN and cb.stats().opened == 2


def test_sequential_probes_go_one_at_a_time_and_a_failed_round_costs_one_call(
        clock: FakeClock) -> None:
    cb = make(clock, half_open_calls=2, wait_in_open=1.25, sequential_probes=True)
    to_half_open(cb, clock)
    assert cb.allow() and not cb.allow()  # the second waits for the first's result
    assert cb.time_until_allowed() == math.inf
    clock.advance(0.02)
    cb.record(0.02, failed=False)
    assert cb.state is S.HALF_OPEN and cb.time_until_allowed() == 0.0
    assert cb.allow() and not cb.allow()
    clock.advance(0.02)
    cb.record(0.02, failed=False)
    assert cb.state is S.CLOSED
    # an outage: every round's first probe fails and reopens it; one call per wait_in_open
    open_breaker(cb, clock)
    calls = 0
    for _ in range(16):  # 20 s of outage
        clock.advance(cb.time_until_allowed())
        while cb.allow():
            calls += 1
            clock.advance(0.001)
            cb.record(0.001, failed=True)
    assert calls == 16 and cb.state is S.OPEN


def test_sequential_probes_wake_a_waiter_when_a_probe_reports() -> None:
    async def main(loop: VirtualTimeLoop) -> float:
        cb = CircuitBreaker(minimum_calls=1, wait_in_open=1.0, half_open_calls=2,
                            sequential_probes=True, clock=loop.time)
        cb.record(0.01, failed=True)
        await cb.wait_until_allowed()
        assert cb.allow()
        waiter = asyncio.ensure_future(cb.wait_until_allowed(timeout=10.0))
        await asyncio.sleep(0.02)
        assert not waiter.done()
        cb.record(0.02, failed=False)  # the first probe passed: the second may go
        await waiter
        return loop.time()

    assert run_virtual(main) == pytest.approx(1.02)


def test_open_jitter_spreads_the_openings_around_wait_in_open(clock: FakeClock) -> None:
    draws = iter([0.0, 1.0, 0.5])
    cb = make(clock, wait_in_open=1.25, open_jitter=0.2, rng=lambda: next(draws))
    waits = []
    for _ in range(3):
        open_breaker(cb, clock)
        waits.append(cb.time_until_allowed())
        cb.release()
    assert waits == pytest.approx([1.0, 1.5, 1.25])
    cb.open_for(3.0)  # a slow-down's time is the system's, not jittered
    assert cb.time_until_allowed() == 3.0
    with pytest.raises(ValueError, match="open_jitter"):
        CircuitBreaker(open_jitter=1.0)


# -- operator overrides ------------------------------------------------------------------------


def test_forced_open_ignores_outcomes_and_time(clock: FakeClock) -> None:
    cb = make(clock)
    cb.force_open()
    record_many(cb, clock, failed=0, ok=30)
    clock.advance(3600)
    assert cb.state is S.FORCED_OPEN
    assert not cb.allow()
    assert cb.time_until_allowed() == math.inf


def test_forced_closed_ignores_failures(clock: FakeClock) -> None:
    cb = make(clock)
    cb.force_close()
    record_many(cb, clock, failed=50, ok=0)
    assert cb.state is S.FORCED_CLOSED and cb.allow()
    assert cb.stats().calls == 0
    cb.open_for(10.0)  # the operator's override wins
    assert cb.state is S.FORCED_CLOSED


def test_release_returns_to_closed_with_an_empty_window(clock: FakeClock) -> None:
    cb = make(clock)
    record_many(cb, clock, failed=5, ok=0)
    cb.force_open()
    cb.release()
    assert cb.state is S.CLOSED
    assert cb.stats().calls == 0
    record_many(cb, clock, failed=5, ok=5)  # five old failures would have made it trip
    assert cb.state is S.OPEN


def test_on_transition_reports_each_change(clock: FakeClock) -> None:
    cb = make(clock, half_open_calls=1)
    seen: list[tuple[S, S]] = []
    cb.on_transition(lambda old, new: seen.append((old, new)))
    to_half_open(cb, clock)
    assert cb.allow()
    clock.advance(0.1)
    cb.record(0.05, failed=False)
    cb.force_open()
    cb.release()
    assert seen == [(S.CLOSED, S.OPEN), (S.OPEN, S.HALF_OPEN), (S.HALF_OPEN, S.CLOSED),
                    (S.CLOSED, S.FORCED_OPEN), (S.FORCED_OPEN, S.CLOSED)]
    assert cb.stats().last_transition == clock.now


# -- open_for ------------------------------------------------------------------------------------


def test_open_for_opens_then_probes(clock: FakeClock) -> None:
    cb = make(clock, wait_in_open=5.0, half_open_calls=1)
    cb.open_for(30.0)
    assert cb.state is S.OPEN
    clock.advance(29.0)
    assert not cb.allow()
    clock.advance(1.0)
    assert cb.allow() and cb.state is S.HALF_OPEN
    clock.advance(0.1)
    cb.record(0.05, failed=True)
    assert cb.state is S.OPEN
    assert cb.time_until_allowed() == 5.0  # a failed probe: the usual wait


def test_open_for_extends_but_never_shortens(clock: FakeClock) -> None:
    cb = make(clock, wait_in_open=5.0)
    open_breaker(cb, clock)
    cb.open_for(1.0)
    assert cb.time_until_allowed() == 5.0
    cb.open_for(60.0)
    assert cb.time_until_allowed() == 60.0
    assert cb.stats().opened == 1


def test_open_for_from_half_open_voids_outstanding_probes(clock: FakeClock) -> None:
    cb = make(clock, half_open_calls=1)
    to_half_open(cb, clock)
    assert cb.allow()
    cb.open_for(2.0)
    clock.advance(2.0)
    assert cb.state is S.HALF_OPEN
    cb.record(1.0, failed=False)  # the old probe: started before this half-open
    assert cb.state is S.HALF_OPEN
    assert cb.allow()


# -- probe_soon (the system seen back by another caller) -------------------------------------


def test_probe_soon_half_opens_an_open_breaker_at_once(clock: FakeClock) -> None:
    cb = make(clock, wait_in_open=5.0, half_open_calls=1)
    open_breaker(cb, clock)
    clock.advance(1.0)
    assert cb.probe_soon()
    assert cb.state is S.HALF_OPEN and cb.allow()


def test_probe_soon_waits_min_open_after_the_opening_never_longer(clock: FakeClock) -> None:
    cb = make(clock, wait_in_open=5.0)
    open_breaker(cb, clock)
    clock.advance(0.2)
    assert cb.probe_soon(min_open=0.5)
    assert cb.time_until_allowed() == pytest.approx(0.3)
    assert cb.probe_soon(min_open=10.0)  # never later than the breaker's own wait
    assert cb.time_until_allowed() == pytest.approx(0.3)


def test_probe_soon_leaves_other_states_alone(clock: FakeClock) -> None:
    cb = make(clock)
    assert not cb.probe_soon() and cb.state is S.CLOSED
    to_half_open(cb, clock)
    assert not cb.probe_soon() and cb.state is S.HALF_OPEN
    cb.force_open()
    assert not cb.probe_soon() and cb.state is S.FORCED_OPEN


def test_probe_soon_wakes_the_waiters_for_the_earlier_deadline() -> None:
    async def main(loop: VirtualTimeLoop) -> float:
        cb = CircuitBreaker(minimum_calls=1, wait_in_open=60.0, clock=loop.time)
        cb.record(0.0, failed=True)
        waiter = asyncio.create_task(cb.wait_until_allowed())
        await asyncio.sleep(2.0)
        cb.probe_soon(min_open=3.0)
        await asyncio.wait_for(waiter, 120)
        return loop.time()

    assert run_virtual(main) == pytest.approx(3.0)


# -- waiting -------------------------------------------------------------------------------------


def test_wait_until_allowed_wakes_at_the_open_deadline() -> None:
    async def main(loop: VirtualTimeLoop) -> None:
        cb = CircuitBreaker(minimum_calls=1, wait_in_open=5.0, clock=loop.time)
        cb.record(0.0, failed=True)
        opened_at = loop.time()
        await asyncio.wait_for(cb.wait_until_allowed(), 60)
        assert loop.time() == pytest.approx(opened_at + 5.0)
        assert cb.state is S.HALF_OPEN and cb.allow()

    run_virtual(main)


def test_wait_until_allowed_times_out() -> None:
    async def main(loop: VirtualTimeLoop) -> None:
        cb = CircuitBreaker(clock=loop.time)
        cb.force_open()
        t0 = loop.time()
        with pytest.raises(CircuitOpenTimeout) as info:
            await cb.wait_until_allowed(timeout=2.0)
        assert isinstance(info.value, asyncio.TimeoutError)
        assert isinstance(info.value, RateLimitTimeout)
        assert loop.time() == pytest.approx(t0 + 2.0)
        assert not cb._waiters

    run_virtual(main)


def test_wait_until_allowed_returns_at_once_when_closed() -> None:
    async def main(loop: VirtualTimeLoop) -> None:
        cb = CircuitBreaker(clock=loop.time)
        await cb.wait_until_allowed(timeout=0)
        assert loop.time() == 0.0

    run_virtual(main)


def test_waiters_wake_on_the_probe_verdict() -> None:
    async def main(loop: VirtualTimeLoop) -> list[str]:
        cb = CircuitBreaker(minimum_calls=1, wait_in_open=1.0, half_open_calls=1,
                            clock=loop.time)
        cb.record(0.0, failed=True)
        events: list[str] = []

        async def waiter(name: str) -> None:
            await cb.wait_until_allowed()
            events.append(f"{name}@{loop.time():g}:{cb.state.value}")

        async def prober() -> None:
            await cb.wait_until_allowed()
            assert cb.allow()  # the only probe
            events.append(f"probe@{loop.time():g}")
            await asyncio.sleep(3.0)
            cb.record(3.0, failed=False)

        tasks = [asyncio.create_task(prober())]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(waiter(n)) for n in ("a", "b")]
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return events

    assert run_virtual(main) == ["probe@1", "a@4:closed", "b@4:closed"]


def test_release_wakes_waiters_of_a_forced_open() -> None:
    async def main(loop: VirtualTimeLoop) -> float:
        cb = CircuitBreaker(clock=loop.time)
        cb.force_open()
        waiter = asyncio.create_task(cb.wait_until_allowed())
        loop.call_later(7.0, cb.release)
        await asyncio.wait_for(waiter, 60)
        return loop.time()

    assert run_virtual(main) == pytest.approx(7.0)


def test_cancelled_waiter_leaves_nothing_behind() -> None:
    async def main(loop: VirtualTimeLoop) -> None:
        cb = CircuitBreaker(clock=loop.time)
        cb.force_open()
        waiter = asyncio.create_task(cb.wait_until_allowed())
        await asyncio.sleep(1.0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not cb._waiters

    run_virtual(main)
