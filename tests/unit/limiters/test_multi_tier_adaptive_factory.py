from __future__ import annotations

import pytest

from faust_backpressure.limiters import (
    AdaptiveRateLimiter,
    LeakyBucketRateLimiter,
    MultiTierRateLimiter,
    RateLimiterFactory,
    RateLimitingStrategy,
    SlidingWindowRateLimiter,
    TokenBucketRateLimiter,
)

from .conftest import FakeClock


def make_tiers(clock: FakeClock) -> MultiTierRateLimiter:
    return MultiTierRateLimiter(
        [("global", 100, 10), ("topic", 10, 5), ("consumer", 1, 3)], clock=clock
    )


def tokens(m: MultiTierRateLimiter) -> dict[str, float]:
    return {n: t.current_tokens for n, t in m.tiers.items()}  # type: ignore[attr-defined]


def test_refusal_by_one_tier_consumes_nothing_elsewhere(clock: FakeClock) -> None:
    m = make_tiers(clock)
    assert isinstance(m, RateLimitingStrategy)
    assert m.try_acquire(3)
    before = tokens(m)
    assert before == {"global": 7, "topic": 2, "consumer": 0}
    assert not m.try_acquire(1)  # consumer tier is empty
    assert tokens(m) == before
    assert m.stats().denied == 1


def test_time_until_available_is_the_slowest_tier(clock: FakeClock) -> None:
    m = make_tiers(clock)
    m.try_acquire(3)
    assert m.time_until_available(1) == pytest.approx(1.0)  # consumer: 1/s
    assert m.time_until_available(3) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="permits"):
        m.try_acquire(4)  # above the consumer tier's capacity of 3


def test_per_tier_rates_and_restore(clock: FakeClock) -> None:
    m = make_tiers(clock)
    assert m.current_rate_limit == 1
    m.update_rate_limit(0.5, tier="consumer")
    assert m.get_current_rate_limit("consumer") == 0.5
    m.update_rate_limit(2.0)  # scale every tier so the bottleneck is 2/s
    assert m.get_current_rate_limit("consumer") == pytest.approx(2.0)
    assert m.get_current_rate_limit("global") == pytest.approx(400.0)
    m.restore_rate_limit("global")
    assert m.get_current_rate_limit("global") == 100
    m.restore_rate_limit()
    assert m.get_current_rate_limit("consumer") == 1
    with pytest.raises(ValueError, match="tier"):
        m.get_current_rate_limit("nope")


def test_utilization_average_and_max(clock: FakeClock) -> None:
    m = MultiTierRateLimiter([("a", 10, 10), ("b", 5, 5)], clock=clock)
    m.try_acquire(5)
    assert m.get_average_utilization() == pytest.approx((0.5 + 1.0) / 2)
    assert m.current_utilization == pytest.approx(1.0)


def test_mixed_tier_types_and_reset(clock: FakeClock) -> None:
    m = MultiTierRateLimiter(
        {
            "bucket": TokenBucketRateLimiter(10, 5, clock=clock),
            "pace": LeakyBucketRateLimiter(10, 2, clock=clock),
            "window": SlidingWindowRateLimiter(4, 1.0, clock=clock),
        },
        clock=clock,
    )
    assert m.try_acquire(2)
    assert not m.try_acquire(1)  # the leaky tier is full
    clock.advance(0.1)
    assert m.try_acquire(1)
    m.reset()
    assert m.try_acquire(2)


def test_multi_tier_validation() -> None:
    with pytest.raises(ValueError, match="tiers"):
        MultiTierRateLimiter([])
    with pytest.raises(ValueError, match="tiers"):
        MultiTierRateLimiter([("a", 1, 1), ("a", 2, 2)])
    with pytest.raises(ValueError, match="tier 'x'"):
        MultiTierRateLimiter({"x": object()})  # type: ignore[dict-item]


def test_shared_tier_misuse_is_detected(clock: FakeClock) -> None:
    class Liar(TokenBucketRateLimiter):
        def try_acquire(self, permits: int = 1) -> bool:
            return False

    m = MultiTierRateLimiter({"liar": Liar(10, 5, clock=clock)}, clock=clock)
    with pytest.raises(RuntimeError, match="must not be shared"):
        m.try_acquire()


def test_aimd_increase_decrease_and_clamp(clock: FakeClock) -> None:
    inner = TokenBucketRateLimiter(100, 100, clock=clock)
    a = AdaptiveRateLimiter(inner, min_rate=10, max_rate=200, mode="aimd",
                            additive_increase=50, multiplicative_decrease=0.5, clock=clock)
    assert isinstance(a, RateLimitingStrategy)
    assert a.on_success() == 150
    assert a.on_success() == 200
    assert a.on_success() == 200  # ceiling
    assert a.record_feedback(0.9) == 100  # above target 0.8: overload
    for _ in range(10):
        a.on_overload()
    assert a.current_rate_limit == 10  # floor
    assert inner.current_rate_limit == 10


def test_pid_moves_toward_target_and_clamps(clock: FakeClock) -> None:
    inner = TokenBucketRateLimiter(100, 100, clock=clock)
    a = AdaptiveRateLimiter(inner, min_rate=10, max_rate=1000, target=0.5, kp=0.1, ki=0.0,
                            clock=clock)
    assert a.adjust(0.9) < 100  # too loaded: slow down
    clock.advance(1)
    assert a.adjust(0.1) > 100  # room left: speed up
    clock.advance(1)
    assert a.adjust(1e9) == 10  # clamped to the floor


def test_pid_anti_windup(clock: FakeClock) -> None:
    inner = TokenBucketRateLimiter(500, 100, clock=clock)
    a = AdaptiveRateLimiter(inner, min_rate=10, max_rate=1000, target=0.5, kp=0.2, ki=0.5,
                            clock=clock)
    for _ in range(100):  # saturated at the ceiling for ~100 s
        clock.advance(1)
        a.adjust(0.0)
    assert a.current_rate_limit == 1000
    assert abs(a.integral) < 5  # did not wind up to ~50
    clock.advance(1)
    assert a.adjust(1.0) < 1000  # reacts to overload at once


def test_adaptive_delegates_and_resets(clock: FakeClock) -> None:
    inner = TokenBucketRateLimiter(100, 2, clock=clock)
    a = AdaptiveRateLimiter(inner, min_rate=1, max_rate=50, clock=clock)
    assert inner.current_rate_limit == 50  # clamped into range at construction
    assert a.try_acquire(2)
    assert not a.try_acquire()
    assert a.time_until_available() == pytest.approx(1 / 50)
    assert a.stats().granted == 2
    a.update_rate_limit(1e6)
    assert a.current_rate_limit == 50
    a.reset()
    assert a.try_acquire(2)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"min_rate": 0, "max_rate": 1}, "min_rate"),
        ({"min_rate": 5, "max_rate": 1}, "max_rate"),
        ({"min_rate": 1, "max_rate": 5, "mode": "ml"}, "mode"),
        ({"min_rate": 1, "max_rate": 5, "kp": -1}, "kp"),
        ({"min_rate": 1, "max_rate": 5, "multiplicative_decrease": 1.5},
         "multiplicative_decrease"),
        ({"min_rate": 1, "max_rate": 5, "additive_increase": 0}, "additive_increase"),
    ],
)
def test_adaptive_validation(kwargs: dict[str, object], name: str, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match=name):
        AdaptiveRateLimiter(TokenBucketRateLimiter(1, 1, clock=clock), **kwargs)  # type: ignore[arg-type]


def test_factory(clock: FakeClock) -> None:
    tb = RateLimiterFactory.create_in_memory(1000, 2000, initial_tokens=0, clock=clock)
    assert isinstance(tb, TokenBucketRateLimiter)
    assert tb.current_tokens == 0
    m = RateLimiterFactory.create_multi_tier(
        global_limit=(100, 200), topic_limit=(10, 20), consumer_limit=None,
        partition=LeakyBucketRateLimiter(5, 5, clock=clock), clock=clock,
    )
    assert list(m.tiers) == ["global", "topic", "partition"]
    assert m.current_rate_limit == 5
    with pytest.raises(ValueError, match="topic_limit"):
        RateLimiterFactory.create_multi_tier((1, 1), topic_limit=(1, 2, 3))  # type: ignore[arg-type]
    assert isinstance(RateLimiterFactory.create_leaky_bucket(1, 1), LeakyBucketRateLimiter)
    assert isinstance(RateLimiterFactory.create_sliding_window(1, 1), SlidingWindowRateLimiter)
    assert isinstance(RateLimiterFactory.create_adaptive(tb, min_rate=1, max_rate=10),
                      AdaptiveRateLimiter)


def test_factory_subclass_overrides_propagate(clock: FakeClock) -> None:
    class Tagged(RateLimiterFactory):
        @classmethod
        def create_in_memory(cls, tokens_per_second: float, burst_capacity: float,
                             **kwargs: object) -> TokenBucketRateLimiter:
            kwargs["initial_tokens"] = 0
            return super().create_in_memory(tokens_per_second, burst_capacity, **kwargs)

    m = Tagged.create_multi_tier((10, 10), clock=clock)
    assert not m.try_acquire()
