"""The public surface: what users import from the top-level package."""

import faust_backpressure


def test_public_names_are_importable_from_the_package() -> None:
    for name in faust_backpressure.__all__:
        assert getattr(faust_backpressure, name) is not None, name


def test_limiters_implement_the_common_protocol() -> None:
    limiter = faust_backpressure.RateLimiterFactory.create_in_memory(100, 10)
    assert isinstance(limiter, faust_backpressure.RateLimitingStrategy)
    assert limiter.try_acquire(10) and not limiter.try_acquire()


def test_the_factory_creates_distributed_limiters_by_the_guides_names() -> None:
    factory = faust_backpressure.RateLimiterFactory
    assert factory.create_with_kafka_storage == factory.create_distributed
    assert callable(factory.create_multi_tier_distributed)
    assert callable(factory.create_in_memory)  # the in-memory ones are still there
