"""Concurrency limits and the ConcurrencyLimiter, on a virtual clock.

The Gradient tests simulate a backend with ``servers`` parallel workers: a call that
starts with ``k`` calls in flight takes ``service_time * max(1, k / servers)``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faust_backpressure.limiters import (
    AIMDLimit,
    CallPermit,
    ConcurrencyLimit,
    ConcurrencyLimiter,
    ConcurrencyLimitTimeout,
    FixedLimit,
    GradientLimit,
    RateLimitTimeout,
    VegasLimit,
)
from faust_backpressure.limiters.concurrency_limiter import Outcome

from .conftest import FakeClock
from .test_circuit_breaker import VirtualTimeLoop, run_virtual

GUARD = 5.0
SERVICE = 0.01


class ManualLimit:
    """A limit set by hand (also shows the protocol is structural)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._callbacks: list[Callable[[int], None]] = []
        self.samples: list[tuple[float, float, int, bool]] = []

    @property
    def limit(self) -> int:
        return self._limit

    def set(self, limit: int) -> None:
        self._limit = limit
        for cb in self._callbacks:
            cb(limit)

    def on_sample(self, start_time: float, rtt: float, in_flight: int, dropped: bool) -> None:
        self.samples.append((start_time, rtt, in_flight, dropped))

    def on_change(self, callback: Callable[[int], None]) -> None:
        self._callbacks.append(callback)


def queue_rtt(servers: int) -> Callable[[int], float]:
    return lambda in_flight: SERVICE * max(1.0, in_flight / servers)


class Saturated:
    """Clients always waiting: start calls while slots are free, finish the earliest."""

    def __init__(self, limiter: ConcurrencyLimiter, clock: FakeClock) -> None:
        self.limiter, self.clock = limiter, clock
        self.calls: list[tuple[float, int, CallPermit]] = []  # a heap by end time
        self.seq = itertools.count()

    def run(self, rtt_of: Callable[[int], float], samples: int) -> list[tuple[int, bool]]:
        """``samples`` finished calls; (limit, probing) after each."""
        limiter, clock, limit = self.limiter, self.clock, self.limiter.limit
        trace: list[tuple[int, bool]] = []
        for _ in range(samples):
            while (permit := limiter.try_acquire()) is not None:
                assert limiter.in_flight <= limit.limit
                end = clock.now + rtt_of(permit.in_flight)
                heapq.heappush(self.calls, (end, next(self.seq), permit))
            end, _, permit = heapq.heappop(self.calls)
            clock.now = max(clock.now, end)
            permit.success()
            trace.append((limit.limit, isinstance(limit, GradientLimit) and limit.probing))
        return trace


def rounds(limit: ConcurrencyLimit, rtt: float, n: int, t: float, *, in_flight: int = 100,
           dropped: bool = False) -> float:
    """``n`` sequential samples, each starting when the previous ended (one per round)."""
    for _ in range(n):
        limit.on_sample(t, rtt, in_flight, dropped)
        t += rtt
    return t


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("factory", "arg"), [
    (lambda: FixedLimit(0), "limit"),
    (lambda: AIMDLimit(initial=0), "initial"),
    (lambda: AIMDLimit(initial=300), "initial"),
    (lambda: AIMDLimit(min_limit=0), "min_limit"),
    (lambda: AIMDLimit(initial=5, min_limit=10), "initial"),
    (lambda: AIMDLimit(min_limit=5, max_limit=4, initial=5), "max_limit"),
    (lambda: AIMDLimit(backoff_ratio=1.0), "backoff_ratio"),
    (lambda: AIMDLimit(timeout=0), "timeout"),
    (lambda: GradientLimit(tolerance=0.5), "tolerance"),
    (lambda: GradientLimit(smoothing=1.5), "smoothing"),
    (lambda: GradientLimit(long_window=0), "long_window"),
    (lambda: GradientLimit(queue_size=-1), "queue_size"),
    (lambda: GradientLimit(probe_interval=0), "probe_interval"),
    (lambda: VegasLimit(smoothing=0), "smoothing"),
    (lambda: VegasLimit(backoff_ratio=0), "backoff_ratio"),
    (lambda: VegasLimit(probe_interval=0), "probe_interval"),
    (lambda: ConcurrencyLimiter(object()), "limit"),  # type: ignore[arg-type]
])
def test_bad_arguments_name_the_argument(factory: Callable[[], object], arg: str) -> None:
    with pytest.raises(ValueError, match=arg):
        factory()


def test_implementations_satisfy_the_protocol() -> None:
    for limit in (FixedLimit(3), AIMDLimit(), GradientLimit(), VegasLimit(), ManualLimit(2)):
        assert isinstance(limit, ConcurrencyLimit)


# -- FixedLimit, AIMDLimit -------------------------------------------------------------------------


def test_fixed_limit_ignores_samples() -> None:
    limit = FixedLimit(4)
    changes: list[int] = []
    limit.on_change(changes.append)
    for dropped in (False, True):
        rounds(limit, 9.0, 50, 0.0, dropped=dropped)
    assert limit.limit == 4 and changes == []


def test_aimd_grows_only_when_the_limit_is_used() -> None:
    limit = AIMDLimit(initial=20)
    changes: list[int] = []
    limit.on_change(changes.append)
    rounds(limit, 0.01, 50, 0.0, in_flight=9)  # 9 * 2 < 20: not evidence
    assert limit.limit == 20 and changes == []
    rounds(limit, 0.01, 3, 1.0, in_flight=11)  # 11 * 2 >= 20, 21, 22
    assert limit.limit == 23
    assert changes == [21, 22, 23]


def test_aimd_backs_off_on_drop_and_on_timeout() -> None:
    limit = AIMDLimit(initial=100, timeout=1.0)
    t = rounds(limit, 0.5, 1, 0.0, dropped=True)
    assert limit.limit == 90
    rounds(limit, 1.5, 1, t)  # slower than timeout: a drop
    assert limit.limit == 81


def test_aimd_backs_off_once_per_round_trip() -> None:
    limit = AIMDLimit(initial=100)
    # 30 calls that were in flight together all time out
    for i in range(30):
        limit.on_sample(float(i) * 0.001, 2.0, 30, True)
    assert limit.limit == 90
    limit.on_sample(2.5, 2.0, 30, True)  # started after the backoff: a new overload
    assert limit.limit == 81


def test_aimd_stays_within_bounds() -> None:
    limit = AIMDLimit(initial=5, min_limit=2, max_limit=8)
    rounds(limit, 0.01, 20, 0.0, in_flight=100)
    assert limit.limit == 8
    rounds(limit, 0.01, 20, 1.0, dropped=True)
    assert limit.limit == 2


# -- GradientLimit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("initial", [20, 100])
def test_gradient_settles_near_the_servers_count(clock: FakeClock, initial: int) -> None:
    servers = 16
    limiter = ConcurrencyLimiter(GradientLimit(initial=initial), clock=clock)
    trace = Saturated(limiter, clock).run(queue_rtt(servers), 20_000)
    steady = [lim for lim, probing in trace[8_000:] if not probing]
    assert len(steady) > 11_000  # probes are short
    assert min(steady) >= 12 and max(steady) <= 40


def test_gradient_converges_down_when_rtt_rises_with_load(clock: FakeClock) -> None:
    limit = GradientLimit(initial=20, max_limit=500)
    sim = Saturated(ConcurrencyLimiter(limit, clock=clock), clock)
    sim.run(lambda _k: SERVICE, 10_000)  # unloaded: grows
    high = limit.limit
    assert high >= 100
    trace = sim.run(queue_rtt(16), 20_000)  # now a 16-worker queue
    assert max(lim for lim, probing in trace[-5_000:] if not probing) <= 40
    assert limit.limit < high


def test_gradient_does_not_collapse_with_a_steady_unloaded_rtt(clock: FakeClock) -> None:
    rng = random.Random(7)
    limit = GradientLimit(initial=20)
    sim = Saturated(ConcurrencyLimiter(limit, clock=clock), clock)
    trace = sim.run(lambda _k: SERVICE * rng.uniform(0.5, 1.5), 20_000)
    assert min(lim for lim, probing in trace if not probing) >= 20
    assert limit.limit == limit.max_limit


def test_gradient_app_limited_does_not_grow() -> None:
    limit = GradientLimit(initial=40, probe_interval=None)
    rounds(limit, SERVICE, 200, 0.0, in_flight=5)
    assert limit.limit == 40


def test_gradient_recovers_from_a_lasting_slowdown_by_probing(clock: FakeClock) -> None:
    sim = Saturated(ConcurrencyLimiter(GradientLimit(initial=20), clock=clock), clock)
    sim.run(queue_rtt(16), 5_000)
    # the backend is three times slower at any load, for good
    trace = sim.run(lambda k: 3.0 * queue_rtt(16)(k), 40_000)
    steady = [lim for lim, probing in trace[-10_000:] if not probing]
    assert min(steady) >= 12 and max(steady) <= 40


def test_gradient_probe_lowers_then_restores_the_limit() -> None:
    limit = GradientLimit(initial=36, probe_interval=5, queue_size=4)
    changes: list[int] = []
    limit.on_change(changes.append)
    t = rounds(limit, 0.02, 10, 0.0)  # warm-up, then the first probe
    assert limit.probing and limit.limit == 4
    limit.on_sample(t - 1.0, 0.5, 36, False)  # a call from before the probe: ignored
    for _ in range(4):
        limit.on_sample(t, 0.01, 4, False)
        t += 0.01
    assert not limit.probing
    assert limit.long_rtt == pytest.approx(0.01)
    assert changes[-2] == 4 and changes[-1] >= 36


def test_gradient_drop_backs_off() -> None:
    limit = GradientLimit(initial=100, probe_interval=None)
    t = rounds(limit, 0.01, 1, 0.0)
    before = limit.limit
    rounds(limit, 0.01, 1, t, dropped=True)
    assert limit.limit in (int(before * 0.9), int(before * 0.9) + 1)  # float estimate


@pytest.mark.parametrize("make", [lambda: GradientLimit(initial=8, probe_interval=None),
                                  lambda: VegasLimit(initial=8, probe_interval=None)])
def test_an_outage_of_fast_refusals_leaves_the_latency_baseline_alone(
        make: Callable[[], GradientLimit | VegasLimit]) -> None:
    # Regression (bench/downstream.py, outage phase): 503s answered in 1 ms, counted as
    # latency, pulled the baseline to ~1 ms; back to 20 ms calls, every round then read as
    # queueing and the limit sat at its floor for 15 s after the outage.
    limit = make()
    t = rounds(limit, 0.02, 50, 0.0, in_flight=8)  # steady: 20 ms calls
    t = rounds(limit, 0.001, 40, t, in_flight=8, dropped=True)  # the outage: fast refusals
    low = limit.limit
    rounds(limit, 0.02, 30, t, in_flight=100)  # back: 20 ms again, a backlog waiting
    if isinstance(limit, GradientLimit):
        assert limit.long_rtt == pytest.approx(0.02, rel=0.05)
    else:
        assert limit.no_load_rtt == pytest.approx(0.02, rel=0.05)
    assert limit.limit >= max(8, 4 * low), (low, limit.limit)


def test_gradient_one_update_per_round() -> None:
    limit = GradientLimit(initial=100, probe_interval=None)
    changes: list[int] = []
    limit.on_change(changes.append)
    limit.on_sample(0.0, 0.01, 100, True)
    for i in range(50):  # all started before the first update ended: same round
        limit.on_sample(0.001 * i / 50, 0.01, 100, True)
    assert changes == [90]


def test_gradient_long_term_decays_after_an_overload() -> None:
    limit = GradientLimit(initial=100, probe_interval=None)
    t = rounds(limit, 1.0, 10, 0.0)
    assert limit.long_rtt == pytest.approx(1.0)
    rounds(limit, 0.1, 40, t)
    # a 600-round average alone would still be ~0.9
    assert limit.long_rtt < 0.3


def test_gradient_survives_zero_rtts() -> None:
    limit = GradientLimit(initial=10, probe_interval=None)
    for i in range(100):
        limit.on_sample(float(i), 0.0, 10, False)
    assert limit.limit >= 10


def test_gradient_stays_within_bounds() -> None:
    limit = GradientLimit(initial=10, min_limit=5, max_limit=30, probe_interval=None)
    t = rounds(limit, 0.01, 300, 0.0)
    assert limit.limit == 30
    rounds(limit, 0.01, 300, t, dropped=True)
    assert limit.limit == 5


# -- ConcurrencyLimiter ------------------------------------------------------------------------


def test_try_acquire_respects_the_limit(clock: FakeClock) -> None:
    limiter = ConcurrencyLimiter(FixedLimit(2), clock=clock)
    a, b = limiter.try_acquire(), limiter.try_acquire()
    assert a is not None and b is not None
    assert limiter.try_acquire() is None
    clock.advance(0.25)
    a.success()
    a.dropped()  # a second release is a no-op
    assert limiter.in_flight == 1
    s = limiter.stats()
    assert (s.successes, s.drops, s.rejected, s.last_rtt) == (1, 0, 1, 0.25)


def test_permit_outcomes_feed_the_limit(clock: FakeClock) -> None:
    limit = ManualLimit(5)
    limiter = ConcurrencyLimiter(limit, clock=clock)
    permits = [limiter.try_acquire() for _ in range(3)]
    assert [p.in_flight for p in permits if p] == [1, 2, 3]
    clock.advance(1.0)
    outcomes: list[Outcome] = ["success", "dropped", "ignore"]
    for permit, outcome in zip(permits, outcomes, strict=True):
        assert permit is not None
        permit.release(outcome)
    assert limit.samples == [(1000.0, 1.0, 1, False), (1000.0, 1.0, 2, True)]
    s = limiter.stats()
    assert (s.successes, s.drops, s.ignored, s.in_flight) == (1, 1, 1, 0)


async def test_fifo_order_and_no_queue_jumping() -> None:
    limiter = ConcurrencyLimiter(FixedLimit(1))
    holder = limiter.try_acquire()
    assert holder is not None
    order: list[int] = []

    async def call(i: int) -> None:
        permit = await limiter.acquire()
        order.append(i)
        await asyncio.sleep(0)
        permit.success()

    tasks = [asyncio.create_task(call(i)) for i in range(6)]
    await asyncio.sleep(0)
    assert limiter.queued == 6
    holder.success()
    assert limiter.try_acquire() is None  # the slot went to the head waiter
    await asyncio.wait_for(asyncio.gather(*tasks), GUARD)
    assert order == list(range(6))
    assert limiter.in_flight == 0 and limiter.queued == 0


async def test_cancelled_waiter_takes_no_slot() -> None:
    limiter = ConcurrencyLimiter(FixedLimit(1))
    holder = limiter.try_acquire()
    assert holder is not None
    first = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert limiter.queued == 1
    holder.success()
    permit = await asyncio.wait_for(second, GUARD)
    assert limiter.in_flight == 1 and permit.in_flight == 1


async def test_cancel_after_handoff_passes_the_slot_on() -> None:
    limiter = ConcurrencyLimiter(FixedLimit(1))
    holder = limiter.try_acquire()
    assert holder is not None
    first = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    holder.success()  # hands the slot to `first`, which has not run yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, GUARD)
    s = limiter.stats()
    assert (s.in_flight, s.queued, s.ignored) == (1, 0, 1)


def test_acquire_timeout() -> None:
    async def main(loop: VirtualTimeLoop) -> None:
        limiter = ConcurrencyLimiter(FixedLimit(1), clock=loop.time)
        holder = await limiter.acquire()
        t0 = loop.time()
        with pytest.raises(ConcurrencyLimitTimeout) as info:
            await limiter.acquire(timeout=2.5)
        assert isinstance(info.value, asyncio.TimeoutError)
        assert isinstance(info.value, RateLimitTimeout)
        assert loop.time() == pytest.approx(t0 + 2.5)
        with pytest.raises(ConcurrencyLimitTimeout):
            await limiter.acquire(timeout=0)
        assert (limiter.queued, limiter.stats().timeouts) == (0, 2)
        loop.call_later(1.0, holder.success)
        permit = await limiter.acquire(timeout=2.0)  # woken by the release, not the timer
        assert loop.time() == pytest.approx(t0 + 3.5)
        assert permit.start_time == loop.time()

    run_virtual(main)


async def test_a_growing_limit_wakes_waiters_at_once() -> None:
    limit = ManualLimit(1)
    limiter = ConcurrencyLimiter(limit)
    assert limiter.try_acquire() is not None
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    limit.set(3)
    assert (limiter.in_flight, limiter.queued) == (3, 1)
    limit.set(4)
    await asyncio.wait_for(asyncio.gather(*waiters), GUARD)
    assert limiter.in_flight == 4


def test_a_shrinking_limit_admits_nothing_until_below_it(clock: FakeClock) -> None:
    limit = ManualLimit(3)
    limiter = ConcurrencyLimiter(limit, clock=clock)
    permits = [limiter.try_acquire() for _ in range(3)]
    limit.set(1)
    for permit in permits[:2]:
        assert permit is not None
        permit.success()
        assert limiter.try_acquire() is None
    assert permits[2] is not None
    permits[2].success()
    assert limiter.try_acquire() is not None


async def test_slot_classifies_the_exit(clock: FakeClock) -> None:
    limit = ManualLimit(5)
    limiter = ConcurrencyLimiter(limit, clock=clock)
    async with limiter.slot():
        clock.advance(0.1)
    with pytest.raises(TimeoutError):
        async with limiter.slot():
            raise TimeoutError
    with pytest.raises(KeyError):
        async with limiter.slot():
            raise KeyError("bad request")
    with pytest.raises(KeyError):
        async with limiter.slot(classify=lambda _e: "dropped"):
            raise KeyError("custom")
    async with limiter.slot() as permit:
        permit.dropped()  # the body decided (e.g. a 429): exit adds nothing
    s = limiter.stats()
    assert (s.successes, s.drops, s.ignored, s.in_flight) == (1, 3, 1, 0)
    assert [d for *_, d in limit.samples] == [False, True, True, True]


async def test_slot_cancelled_body_is_ignored() -> None:
    limiter = ConcurrencyLimiter(FixedLimit(1))

    async def body() -> None:
        async with limiter.slot():
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    s = limiter.stats()
    assert (s.in_flight, s.ignored) == (0, 1)


# -- property: never more in flight than the limit ---------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["acq", "success", "dropped", "ignore"]),
                          st.integers(0, 50), st.floats(0, 2.0)), max_size=120),
       st.integers(1, 8))
def test_in_flight_never_exceeds_the_limit(ops: list[tuple[str, int, float]],
                                           initial: int) -> None:
    clock = FakeClock()
    limit = AIMDLimit(initial=initial, max_limit=12, timeout=1.5)
    limiter = CheckedLimiter(limit, clock=clock)
    held: list[CallPermit] = []
    for op, pick, dt in ops:
        clock.advance(dt)
        if op == "acq":
            permit = limiter.try_acquire()
            if permit is not None:
                assert limiter.in_flight <= limit.limit
                held.append(permit)
            else:
                assert limiter.in_flight >= limit.limit
        elif held:
            permit = held.pop(pick % len(held))
            permit.release(op)  # type: ignore[arg-type]
            permit.release(op)  # type: ignore[arg-type]  # no-op
        assert limiter.in_flight == len(held)
        assert limit.min_limit <= limit.limit <= limit.max_limit


class CheckedLimiter(ConcurrencyLimiter):
    """Checks the bound at the moment of each grant."""

    def _grant(self) -> CallPermit:
        assert self.in_flight < self.limit.limit
        return super()._grant()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["acq", "success", "dropped", "cancel"]),
                          st.integers(0, 50)), max_size=60),
       st.integers(1, 4))
def test_waiters_get_slots_in_order_within_the_limit(ops: list[tuple[str, int]],
                                                     initial: int) -> None:
    async def main(loop: VirtualTimeLoop) -> None:
        limit = AIMDLimit(initial=initial, max_limit=6)
        limiter = CheckedLimiter(limit, clock=loop.time)
        held: list[CallPermit] = []
        waiting: list[asyncio.Task[CallPermit]] = []
        granted: list[int] = []

        async def acquire(i: int) -> CallPermit:
            permit = await limiter.acquire()
            granted.append(i)
            held.append(permit)
            return permit

        for n, (op, pick) in enumerate(ops):
            if op == "acq":
                waiting.append(asyncio.create_task(acquire(n)))
            elif op == "cancel":
                if waiting:
                    waiting.pop(pick % len(waiting)).cancel()
            elif held:
                held.pop(pick % len(held)).release(op)  # type: ignore[arg-type]
            await asyncio.sleep(0.001)
            assert limiter.in_flight == len(held)
        assert granted == sorted(granted)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

    run_virtual(main)


# -- VegasLimit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("initial", [4, 20, 100])
def test_vegas_settles_a_few_calls_above_the_servers_count(clock: FakeClock,
                                                           initial: int) -> None:
    # 16 servers: the limit settles where the queue it builds is 3-6 log10(limit) calls
    limiter = ConcurrencyLimiter(VegasLimit(initial=initial), clock=clock)
    trace = Saturated(limiter, clock).run(queue_rtt(16), 20_000)
    steady = [lim for lim, _ in trace[8_000:]]
    assert min(steady) >= 16 and max(steady) <= 30, (min(steady), max(steady))


def test_vegas_follows_a_backend_that_gets_busier(clock: FakeClock) -> None:
    limit = VegasLimit(initial=20, max_limit=500)
    sim = Saturated(ConcurrencyLimiter(limit, clock=clock), clock)
    sim.run(lambda _k: SERVICE, 5_000)  # unloaded: grows
    assert limit.limit >= 100
    trace = sim.run(queue_rtt(16), 20_000)  # now a 16-server queue
    assert max(lim for lim, _ in trace[-5_000:]) <= 30


def test_vegas_backs_off_on_a_drop_and_does_not_grow_when_unused() -> None:
    limit = VegasLimit(initial=50, max_limit=500)
    t = rounds(limit, SERVICE, 5, 0.0, in_flight=60)
    grown = limit.limit
    assert grown > 50
    rounds(limit, SERVICE, 1, t, in_flight=60, dropped=True)
    assert limit.limit == int(grown * 0.9) or limit.limit == int(grown * 0.9) + 1
    before = limit.limit
    rounds(limit, SERVICE, 10, t + 1, in_flight=2)  # app limited: no evidence
    assert limit.limit == before


def test_vegas_relearns_its_baseline_when_the_backend_slows_for_good() -> None:
    limit = VegasLimit(initial=20, max_limit=200, probe_interval=50)
    t = rounds(limit, SERVICE, 100, 0.0, in_flight=200)
    assert limit.no_load_rtt == pytest.approx(SERVICE)
    rounds(limit, 4 * SERVICE, 120, t, in_flight=200)  # 4x slower, whatever the load
    assert limit.no_load_rtt == pytest.approx(4 * SERVICE)  # not read as queueing forever
