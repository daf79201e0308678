"""Property-based checks of the limiters' guarantees, on a virtual clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from faust_backpressure.limiters import (
    LeakyBucketRateLimiter,
    MultiTierRateLimiter,
    SlidingWindowRateLimiter,
    TokenBucketRateLimiter,
)
from faust_backpressure.limiters.base import LimiterBase

from .conftest import FakeClock

TOL = 1e-6
SETTINGS = settings(max_examples=150, deadline=None)

rates = st.floats(min_value=0.5, max_value=1000, allow_nan=False)
advances = st.floats(min_value=0, max_value=2.0, allow_nan=False)


def ops(max_permits: int) -> st.SearchStrategy[list[tuple[str, float]]]:
    return st.lists(
        st.one_of(
            st.tuples(st.just("acq"), st.integers(1, max_permits).map(float)),
            st.tuples(st.just("adv"), advances),
        ),
        max_size=60,
    )


def run(limiter: LimiterBase, clock: FakeClock, steps: list[tuple[str, float]]
        ) -> list[tuple[float, int]]:
    grants: list[tuple[float, int]] = []
    for kind, value in steps:
        if kind == "adv":
            clock.advance(value)
        elif limiter.try_acquire(int(value)):
            grants.append((clock(), int(value)))
    return grants


def max_in_intervals(grants: list[tuple[float, int]], length: float) -> int:
    """Most permits granted within any interval of ``length`` (closed) between grants."""
    best = 0
    for i, (ti, _) in enumerate(grants):
        total = 0
        for tj, pj in grants[i:]:
            if tj - ti > length:
                break
            total += pj
        best = max(best, total)
    return best


@SETTINGS
@given(rate=rates, burst=st.integers(1, 20), data=st.data())
def test_token_bucket_never_exceeds_rate_times_t_plus_burst(
    rate: float, burst: int, data: st.DataObject
) -> None:
    clock = FakeClock()
    tb = TokenBucketRateLimiter(rate, burst, clock=clock)
    grants = run(tb, clock, data.draw(ops(burst)))
    for i, (ti, _) in enumerate(grants):
        total = 0
        for tj, pj in grants[i:]:
            total += pj
            assert total <= rate * (tj - ti) + burst + TOL
    assert tb.stats().granted == sum(p for _, p in grants)


@SETTINGS
@given(rate=rates, capacity=st.integers(1, 10), data=st.data())
def test_leaky_bucket_spacing(rate: float, capacity: int, data: st.DataObject) -> None:
    clock = FakeClock()
    lb = LeakyBucketRateLimiter(rate, capacity, clock=clock)
    grants = run(lb, clock, data.draw(ops(capacity)))
    for i, (ti, _) in enumerate(grants):
        total = 0
        for tj, pj in grants[i:]:
            total += pj
            assert total <= rate * (tj - ti) + capacity + TOL
        if capacity == 1 and i + 1 < len(grants):
            assert grants[i + 1][0] - ti >= 1 / rate - TOL  # strict pacing
    assert 0 <= lb.current_level <= capacity + TOL


@SETTINGS
@given(
    max_permits=st.integers(1, 20),
    window=st.floats(min_value=0.1, max_value=3.0),
    sub_windows=st.integers(1, 12),
    data=st.data(),
)
def test_sliding_window_documented_bounds(
    max_permits: int, window: float, sub_windows: int, data: st.DataObject
) -> None:
    clock = FakeClock()
    sw = SlidingWindowRateLimiter(max_permits, window, sub_windows=sub_windows, clock=clock)
    grants = run(sw, clock, data.draw(ops(max_permits)))
    exact = window * (sub_windows - 1) / sub_windows
    if exact > TOL:
        assert max_in_intervals(grants, exact - TOL) <= max_permits
    assert max_in_intervals(grants, window - TOL) <= 2 * max_permits
    assert 0 <= sw.available <= max_permits


def snapshot(m: MultiTierRateLimiter) -> dict[str, float]:
    return {n: t.current_tokens for n, t in m.tiers.items()}  # type: ignore[attr-defined]


@SETTINGS
@given(
    specs=st.lists(st.tuples(rates, st.integers(1, 10)), min_size=1, max_size=4),
    data=st.data(),
)
def test_multi_tier_refusal_leaves_every_tier_unchanged(
    specs: list[tuple[float, int]], data: st.DataObject
) -> None:
    clock = FakeClock()
    m = MultiTierRateLimiter(
        [(f"t{i}", rate, burst) for i, (rate, burst) in enumerate(specs)], clock=clock
    )
    smallest = min(burst for _, burst in specs)
    for kind, value in data.draw(ops(smallest)):
        if kind == "adv":
            clock.advance(value)
            continue
        before = snapshot(m)
        if m.try_acquire(int(value)):
            after = snapshot(m)
            assert all(abs(before[n] - value - after[n]) < TOL for n in before)
        else:
            assert snapshot(m) == before
            assert any(before[n] < value for n in before)
