"""MultiTierRateLimiter: the inline token-bucket path, the generic path and wait coalescing."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faust_backpressure.limiters import (
    AdaptiveRateLimiter,
    LeakyBucketRateLimiter,
    MultiTierRateLimiter,
    RateLimitingStrategy,
    SlidingWindowRateLimiter,
    TokenBucketRateLimiter,
)

from .conftest import FakeClock

TOL = 1e-6
SETTINGS = settings(max_examples=150, deadline=None)
GUARD = 5.0

rates = st.floats(min_value=0.5, max_value=1000, allow_nan=False)
specs_st = st.lists(st.tuples(rates, st.integers(1, 10)), min_size=1, max_size=4)


def steps(max_permits: int) -> st.SearchStrategy[list[tuple[str, float]]]:
    return st.lists(
        st.one_of(
            st.tuples(st.just("acq"), st.integers(1, max_permits).map(float)),
            st.tuples(st.just("acq"), st.just(1.0)),  # the permits == 1 fast path
            st.tuples(st.just("adv"), st.floats(min_value=0, max_value=1.5)),
            st.tuples(st.just("rate"), st.floats(min_value=0.5, max_value=1000)),
        ),
        max_size=60,
    )


def inline(specs: list[tuple[float, int]], clock: FakeClock) -> MultiTierRateLimiter:
    m = MultiTierRateLimiter(
        [(f"t{i}", rate, burst) for i, (rate, burst) in enumerate(specs)], clock=clock
    )
    assert m._buckets  # the inline path is in use
    return m


def generic(specs: list[tuple[float, int]], clock: FakeClock) -> MultiTierRateLimiter:
    def tier_clock() -> float:  # same time, another clock object: no inline path
        return clock()

    m = MultiTierRateLimiter(
        {
            f"t{i}": TokenBucketRateLimiter(rate, burst, clock=tier_clock)
            for i, (rate, burst) in enumerate(specs)
        },
        clock=clock,
    )
    assert not m._buckets
    return m


def state(m: MultiTierRateLimiter) -> list[tuple[float, int, float]]:
    return [
        (t.current_tokens, t.stats().granted, t.current_utilization)  # type: ignore[attr-defined]
        for t in m.tiers.values()
    ]


def test_which_path_is_used(clock: FakeClock) -> None:
    assert inline([(1, 1), (2, 2)], clock)._buckets
    assert not generic([(1, 1), (2, 2)], clock)._buckets
    mixed = MultiTierRateLimiter(
        {
            "a": TokenBucketRateLimiter(1, 1, clock=clock),
            "b": LeakyBucketRateLimiter(1, 1, clock=clock),
        },
        clock=clock,
    )
    assert not mixed._buckets

    class Sub(TokenBucketRateLimiter):  # may override try_acquire: must be asked
        pass

    assert not MultiTierRateLimiter({"s": Sub(1, 1, clock=clock)}, clock=clock)._buckets


@SETTINGS
@given(specs=specs_st, data=st.data())
def test_inline_and_generic_paths_agree(specs: list[tuple[float, int]],
                                        data: st.DataObject) -> None:
    """Same answers, tier tokens, per-tier counters and utilization (windows roll)."""
    clock = FakeClock()
    fast, slow = inline(specs, clock), generic(specs, clock)
    smallest = min(burst for _, burst in specs)
    for kind, value in data.draw(steps(smallest)):
        if kind == "adv":
            clock.advance(value)
        elif kind == "rate":
            fast.update_rate_limit(value)
            slow.update_rate_limit(value)
        else:
            before = state(fast)
            got = fast.try_acquire(int(value))
            assert got == slow.try_acquire(int(value))
            if not got:  # atomic: a refusal leaves every tier unchanged
                assert state(fast) == before
        for fast_tier, slow_tier in zip(state(fast), state(slow), strict=True):
            assert fast_tier == pytest.approx(slow_tier, abs=TOL)
        assert fast.time_until_available() == pytest.approx(slow.time_until_available(),
                                                            abs=TOL)
        fs, ss = fast.stats(), slow.stats()
        assert (fs.granted, fs.denied) == (ss.granted, ss.denied)
        assert fs.utilization == pytest.approx(ss.utilization, abs=TOL)


@SETTINGS
@given(
    bucket=st.tuples(rates, st.integers(1, 10)),
    leaky=st.tuples(rates, st.integers(1, 10)),
    window=st.tuples(st.integers(1, 10), st.floats(min_value=0.1, max_value=2.0)),
    data=st.data(),
)
def test_generic_path_with_mixed_tiers_is_atomic(
    bucket: tuple[float, int], leaky: tuple[float, int], window: tuple[int, float],
    data: st.DataObject,
) -> None:
    clock = FakeClock()
    m = MultiTierRateLimiter(
        {
            "bucket": TokenBucketRateLimiter(*bucket, clock=clock),
            "leaky": LeakyBucketRateLimiter(*leaky, clock=clock),
            "window": SlidingWindowRateLimiter(*window, clock=clock),
        },
        clock=clock,
    )

    def available() -> dict[str, float]:
        return {n: t.stats().tokens for n, t in m.tiers.items()}  # type: ignore[misc]

    smallest = min(bucket[1], leaky[1], window[0])
    for kind, value in data.draw(steps(smallest)):
        if kind == "adv":
            clock.advance(value)
            continue
        if kind == "rate":
            continue
        before = available()
        if m.try_acquire(int(value)):
            after = available()
            assert all(abs(before[n] - value - after[n]) < TOL for n in before)
        else:
            assert available() == pytest.approx(before, abs=TOL)
            assert any(before[n] < value + TOL for n in before)


def test_inline_validation_matches_the_tiers(clock: FakeClock) -> None:
    specs = [(1.0, 10), (1.0, 5), (1.0, 3)]
    for bad in (0, -1, True, 1.5, 7):
        with pytest.raises(ValueError) as fast_err:
            inline(specs, clock).try_acquire(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError) as slow_err:
            generic(specs, clock).try_acquire(bad)  # type: ignore[arg-type]
        assert str(fast_err.value) == str(slow_err.value)
    with pytest.raises(ValueError, match=r"capacity \(5\)"):
        inline(specs, clock).time_until_available(7)  # the first tier too small


async def test_inline_path_still_detects_a_tier_with_its_own_waiters(clock: FakeClock) -> None:
    m = inline([(10, 5), (10, 1)], clock)
    assert m.try_acquire()
    tier = m.tiers["t1"]
    waiter = asyncio.create_task(tier.acquire())  # misuse: acquiring from a tier directly
    await asyncio.sleep(0)
    assert tier.queued_waiters == 1  # type: ignore[attr-defined]
    clock.advance(1.0)  # the tier refilled, but its own waiter has not run yet
    with pytest.raises(RuntimeError, match="must not be shared"):
        m.try_acquire()
    waiter.cancel()


def test_full_delay_ignores_a_roomy_tier_that_stays_full(clock: FakeClock) -> None:
    m = inline([(4000, 4000), (2000, 2000)], clock)
    assert m.try_acquire(2000)
    clock.advance(0.5)  # global refilled to full; consumer at 1000
    # The wait may be stretched (up to min_wait) until the whole limiter is full, i.e.
    # until the consumer tier holds 2000: 0.5 s, not 0 s because global is full.
    assert m._full_delay(clock()) == pytest.approx(0.5)
    assert m._max_permits() == 2000


def test_full_delay_generic_tiers(clock: FakeClock) -> None:
    m = MultiTierRateLimiter(
        {
            "bucket": TokenBucketRateLimiter(10, 4, clock=clock),
            "leaky": LeakyBucketRateLimiter(1, 2, clock=clock),
        },
        clock=clock,
    )
    assert m._max_permits() == 2
    assert m.try_acquire(2)
    assert m._full_delay(clock()) == pytest.approx(2.0)  # the leaky tier drains 2 at 1/s
    nested = MultiTierRateLimiter({"inner": m, "b": TokenBucketRateLimiter(1, 5, clock=clock)},
                                  clock=clock)
    assert nested._max_permits() == 2
    assert nested._full_delay(clock()) == pytest.approx(2.0)
    opaque = MultiTierRateLimiter(
        {"adaptive": AdaptiveRateLimiter(TokenBucketRateLimiter(10, 4, clock=clock),
                                         min_rate=1, max_rate=10, clock=clock)},
        clock=clock,
    )
    assert isinstance(opaque.tiers["adaptive"], RateLimitingStrategy)
    assert opaque._full_delay(clock()) == 0.0  # cannot inspect: no stretching


async def test_waits_behind_a_roomy_full_tier_are_coalesced() -> None:
    m = MultiTierRateLimiter([("global", 4000, 40), ("consumer", 2000, 20)])
    for _ in range(220):  # 20 at once, then 200 at 2000/s
        await asyncio.wait_for(m.acquire(), GUARD)
    s = m.stats()
    assert s.granted == 220
    # Without coalescing there is one wake-up per grant (~200); min_wait (4 ms) gives ~25.
    assert s.sleeps <= 100
    assert m.tiers["global"].stats().granted == 220
