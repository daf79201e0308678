"""The public surface: what users import from the top-level package."""

import faust_backpressure


def test_public_names_are_importable_from_the_package() -> None:
    for name in faust_backpressure.__all__:
        assert getattr(faust_backpressure, name) is not None, name


def test_limiters_implement_the_common_protocol() -> None:
    limiter = faust_backpressure.RateLimiterFactory.create_in_memory(100, 10)
    assert isinstance(limiter, faust_backpressure.RateLimitingStrategy)
    assert limiter.try_acquire(10) and not limiter.try_acquire()


def test_each_factory_is_exported_under_its_own_name() -> None:
    from faust_backpressure import limiters, tables

    assert faust_backpressure.RateLimiterFactory is limiters.RateLimiterFactory
    assert not hasattr(faust_backpressure.RateLimiterFactory, "create_distributed")
    factory = faust_backpressure.DistributedRateLimiterFactory
    assert factory is tables.DistributedRateLimiterFactory
    assert not hasattr(tables, "RateLimiterFactory")
    assert factory.create_with_kafka_storage == factory.create_distributed
    assert callable(factory.create_multi_tier_distributed)
    assert callable(factory.create_in_memory)  # the in-memory ones are still there


def test_every_limiter_says_its_name_and_largest_request() -> None:
    from faust_backpressure.control import CreditBasedFlowController
    from faust_backpressure.limiters import (
        AdaptiveRateLimiter,
        LeakyBucketRateLimiter,
        MultiTierRateLimiter,
        SlidingWindowRateLimiter,
        TokenBucketRateLimiter,
    )
    from faust_backpressure.tables import DistributedRateLimiter

    bucket = TokenBucketRateLimiter(10, 20, rate_limiter_id="api")
    cases = {
        bucket: ("api", 20),
        TokenBucketRateLimiter(10, 20): ("TokenBucketRateLimiter", 20),
        LeakyBucketRateLimiter(10, 5): ("LeakyBucketRateLimiter", 5),
        SlidingWindowRateLimiter(30, 1.0): ("SlidingWindowRateLimiter", 30),
        MultiTierRateLimiter([("a", 100, 100), ("b", 10, 7)]): ("MultiTierRateLimiter", 7),
        AdaptiveRateLimiter(bucket, min_rate=1, max_rate=100): ("AdaptiveRateLimiter", 20),
        CreditBasedFlowController(window=12): ("CreditBasedFlowController", 12),
        DistributedRateLimiter("orders", 10, 40): ("orders", 40),
    }
    for limiter, (name, max_permits) in cases.items():
        assert isinstance(limiter, faust_backpressure.RateLimitingStrategy)
        assert (limiter.name, limiter.max_permits) == (name, max_permits), limiter


SUBPACKAGES = ("agents", "app", "config", "control", "limiters", "tables")


def _annotation_names(obj: object) -> set[str]:
    import inspect
    import re

    signature = inspect.signature(obj)  # type: ignore[arg-type]
    texts = [str(p.annotation) for p in signature.parameters.values()]
    texts.append(str(signature.return_annotation))
    return {word for text in texts for word in re.findall(r"[A-Za-z_]\w*", text)}


def test_the_types_in_the_installers_signatures_are_exported() -> None:
    """What ``Backpressure``'s methods take and return can be imported from the package."""
    import importlib

    ours = {name for sub in SUBPACKAGES
            for name in importlib.import_module(f"faust_backpressure.{sub}").__all__}
    installer = faust_backpressure.Backpressure
    used: set[str] = set()
    for name, member in vars(installer).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(member, property):
            member = member.fget
        if callable(member):
            used |= _annotation_names(member) & ours
    assert {"LimiterSpec", "CostFunction", "OnLimit", "ControlLoop", "BackpressureThresholds",
            "CreditBasedFlowController", "Pipeline"} <= used
    assert used <= set(faust_backpressure.__all__), used - set(faust_backpressure.__all__)


def test_internals_are_not_exported() -> None:
    for name in ("ControlLoops", "WorkerSample", "LagProbe", "CreditFlow", "LimiterChannel",
                 "resolve_limiter"):
        assert name not in faust_backpressure.__all__
