"""The one pure bucket (``limiters/bucket.py``) and the hot paths that inline it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faust_backpressure.limiters import MultiTierRateLimiter, TokenBucketRateLimiter
from faust_backpressure.limiters.bucket import EPSILON, Bucket, refill, small_burst

from .conftest import FakeClock


def test_refill_adds_rate_times_elapsed_and_cuts_to_the_cap() -> None:
    assert refill(1.0, 10.0, 0.2, 5.0) == pytest.approx(3.0)
    assert refill(1.0, 10.0, 2.0, 5.0) == 5.0
    assert refill(8.0, 10.0, 0.1, 5.0) == 5.0  # the ledger's cap may drop below the level
    assert small_burst(1000.0) == pytest.approx(50.0)  # 50 ms of the rate
    assert small_burst(10.0) == 1.0 and small_burst(10.0, at_least=2.0) == 2.0


def test_a_level_above_the_capacity_is_spent_down_never_cut() -> None:
    bucket = Bucket(rate=100.0, capacity=2.0, level=10.0, at=0.0)  # a grant above its cap
    assert bucket.refill(1.0) == 10.0 and bucket.at == 1.0
    assert bucket.take(9, 1.0) and bucket.level == pytest.approx(1.0)
    assert bucket.refill(1.005) == pytest.approx(1.5)  # below the cap: refills again
    assert bucket.refill(2.0) == 2.0


def test_take_and_delay_allow_float_rounding_but_nothing_more() -> None:
    bucket = Bucket(rate=3.0, capacity=5.0, level=0.0, at=0.0)
    assert bucket.delay(1, 0.0) == pytest.approx(1 / 3)
    assert not bucket.take(1, 1 / 3 - 1e-6)
    assert bucket.take(1, 1 / 3)  # refill may compute 0.999...: EPSILON covers it
    assert bucket.level >= -EPSILON
    bucket.set_rate(6.0, 1 / 3)
    assert bucket.delay(1, 1 / 3) == pytest.approx(1 / 6)
    bucket.fill(4.0, 2.0)
    assert bucket.level_at(3.0) == 5.0 and bucket.level == 4.0  # level_at changes nothing


steps = st.lists(st.tuples(st.floats(0.0, 0.05), st.integers(1, 3)), max_size=80)


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(1.0, 500.0), burst=st.floats(1.0, 20.0), steps=steps)
def test_the_inlined_hot_paths_decide_as_bucket_take_does(
        rate: float, burst: float, steps: list[tuple[float, int]]) -> None:
    clock = FakeClock()
    limiter = TokenBucketRateLimiter(rate, burst, initial_tokens=0, clock=clock)
    tiers = MultiTierRateLimiter({  # token-bucket tiers on its clock: the inlined path
        "a": TokenBucketRateLimiter(rate, burst, initial_tokens=0, clock=clock),
        "b": TokenBucketRateLimiter(2 * rate, burst, initial_tokens=0, clock=clock)},
        clock=clock)
    assert tiers._buckets  # the inlined path is used, not the tiers' methods
    reference = Bucket(rate, burst, 0.0, clock.now)
    for dt, permits in steps:
        clock.advance(dt)
        permits = min(permits, int(burst))
        expected = reference.take(permits, clock.now)
        assert limiter.try_acquire(permits) is expected
        assert limiter.bucket.level == pytest.approx(reference.level, abs=1e-9)
        # Tier "a" binds (tier "b" refills twice as fast from the same level).
        assert tiers.try_acquire(permits) is expected
