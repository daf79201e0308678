from __future__ import annotations

import math

import pytest

from faust_backpressure.limiters import RateLimitingStrategy, TokenBucketRateLimiter

from .conftest import FakeClock


def test_starts_full_by_default_and_releases_the_burst(clock: FakeClock) -> None:
    tb = TokenBucketRateLimiter(10, 5, clock=clock)
    assert tb.current_tokens == 5
    assert [tb.try_acquire() for _ in range(6)] == [True] * 5 + [False]


def test_initial_tokens_zero_avoids_first_burst(clock: FakeClock) -> None:
    tb = TokenBucketRateLimiter(10, 5, initial_tokens=0, clock=clock)
    assert not tb.try_acquire()
    clock.advance(0.1)
    assert tb.try_acquire()
    assert not tb.try_acquire()


def test_exact_lazy_refill_and_capacity_cap(clock: FakeClock) -> None:
    tb = TokenBucketRateLimiter(4, 10, initial_tokens=0, clock=clock)
    clock.advance(0.5)
    assert tb.current_tokens == pytest.approx(2.0)
    assert tb.try_acquire(2)
    assert not tb.try_acquire()
    clock.advance(100)
    assert tb.current_tokens == 10
    assert tb.max_tokens == 10
    assert tb.try_acquire(10)
    assert tb.current_tokens == 0


def test_time_until_available(clock: FakeClock) -> None:
    tb = TokenBucketRateLimiter(4, 10, initial_tokens=1, clock=clock)
    assert tb.time_until_available(1) == 0.0
    assert tb.time_until_available(3) == pytest.approx(0.5)
    clock.advance(0.5)
    assert tb.time_until_available(3) == 0.0
    assert tb.try_acquire(3)


def test_update_rate_limit_keeps_tokens_and_applies_at_once(clock: FakeClock) -> None:
    tb = TokenBucketRateLimiter(10, 100, initial_tokens=0, clock=clock)
    clock.advance(1.0)  # 10 tokens at the old rate
    tb.update_rate_limit(1.0)
    assert tb.current_tokens == pytest.approx(10.0)
    assert tb.current_rate_limit == 1.0
    clock.advance(1.0)
    assert tb.current_tokens == pytest.approx(11.0)


def test_reset_restores_initial_tokens_and_counters_keeps_rate(clock: FakeClock) -> None:
    tb = TokenBucketRateLimiter(10, 5, initial_tokens=2, clock=clock)
    assert tb.try_acquire(2)
    assert not tb.try_acquire()
    tb.update_rate_limit(20)
    tb.reset()
    assert tb.current_tokens == 2
    assert tb.current_rate_limit == 20
    s = tb.stats()
    assert (s.granted, s.denied, s.waits) == (0, 0, 0)


def test_metadata_and_burst_query(clock: FakeClock) -> None:
    tb = TokenBucketRateLimiter(10, 5, rate_limiter_id="orders", clock=clock)
    assert isinstance(tb, RateLimitingStrategy)
    assert tb.rate_limiter_id == "orders"
    assert (tb.is_distributed, tb.is_persistent, tb.storage_backend) == (False, False, "memory")
    assert tb.can_accommodate_burst(5)
    assert not tb.can_accommodate_burst(6)
    tb.try_acquire(3)
    assert not tb.can_accommodate_burst(3)


def test_stats_and_utilization_window(clock: FakeClock) -> None:
    tb = TokenBucketRateLimiter(10, 10, clock=clock)
    assert tb.current_utilization == 0.0
    for _ in range(5):
        assert tb.try_acquire()
    assert tb.current_utilization == pytest.approx(0.5)
    assert not tb.try_acquire(10)
    s = tb.stats()
    assert (s.granted, s.denied, s.rate) == (5, 1, 10)
    assert s.tokens == pytest.approx(5)
    clock.advance(1.5)  # half of the previous window still counts
    assert tb.current_utilization == pytest.approx(0.25)
    clock.advance(1.0)
    assert tb.current_utilization == 0.0


def test_utilization_rolls_on_the_hot_path(clock: FakeClock) -> None:
    tb = TokenBucketRateLimiter(100, 100, clock=clock)
    for _ in range(50):
        tb.try_acquire()
    clock.advance(1.0)
    for _ in range(20):
        tb.try_acquire()
    # previous window 50 (weight 1.0 at the start of the new one) + current 20
    assert tb.current_utilization == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        ((0, 10), {}, "tokens_per_second"),
        ((-1, 10), {}, "tokens_per_second"),
        ((math.nan, 10), {}, "tokens_per_second"),
        ((math.inf, 10), {}, "tokens_per_second"),
        (("5", 10), {}, "tokens_per_second"),
        ((10, 0.5), {}, "burst_capacity"),
        ((10, math.inf), {}, "burst_capacity"),
        ((10, 5), {"initial_tokens": 6}, "initial_tokens"),
        ((10, 5), {"initial_tokens": -1}, "initial_tokens"),
        ((10, 5), {"utilization_window": 0}, "utilization_window"),
    ],
)
def test_constructor_validation_names_the_argument(
    args: tuple[object, ...], kwargs: dict[str, object], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        TokenBucketRateLimiter(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("permits", [0, -1, 6, 2.5, "1", True])
async def test_bad_permits_raise(clock: FakeClock, permits: object) -> None:
    tb = TokenBucketRateLimiter(10, 5, clock=clock)
    if permits is not True:  # True == 1 passes the hot path's cheap check
        with pytest.raises(ValueError, match="permits"):
            tb.try_acquire(permits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="permits"):
        tb.time_until_available(permits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="permits"):
        await tb.acquire(permits)  # type: ignore[arg-type]


def test_update_rate_validation(clock: FakeClock) -> None:
    tb = TokenBucketRateLimiter(10, 5, clock=clock)
    with pytest.raises(ValueError, match="new_rate must be a finite number > 0, got nan"):
        tb.update_rate_limit(math.nan)


def test_error_message_format() -> None:
    with pytest.raises(ValueError, match=r"tokens_per_second must be a finite number > 0, got nan"):
        TokenBucketRateLimiter(math.nan, 5)
