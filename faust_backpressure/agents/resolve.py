"""The one place a limiter given as an object, an id or tier specs becomes a limiter."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from faust_backpressure.errors import ConflictingOption
from faust_backpressure.limiters import (
    MultiTierRateLimiter,
    RateLimitingStrategy,
    TierSpec,
)
from faust_backpressure.tables import DistributedRateLimiter, DistributedRateLimiterFactory
from faust_backpressure.tables.service import find_channel

__all__ = ["LimiterSpec", "resolve_limiter"]

#: A limiter object, a limiter id (shared by id across workers) or multi-tier specs.
LimiterSpec = RateLimitingStrategy | str | Iterable[TierSpec]


def resolve_limiter(app: Any, spec: LimiterSpec, *, tokens_per_second: float | None = None,
                    burst_capacity: float | None = None) -> RateLimitingStrategy:
    """Turn ``spec`` into a limiter.

    * a limiter object (token bucket, multi-tier, distributed, ...) is used as is;
    * a string is a limiter **id**: the distributed limiter shared by that id by every worker
      of the app, the one this process already has for that id, else a new one
      (``DistributedRateLimiterFactory.create_distributed``), which needs
      ``tokens_per_second`` (``burst_capacity`` defaults to one second of tokens);
    * an iterable of ``(name, tokens_per_second, burst_capacity)`` is a multi-tier limiter.
    """
    if isinstance(spec, RateLimitingStrategy):
        return spec
    if isinstance(spec, str):
        channel = find_channel(app)
        known = None if channel is None else channel.limiters.get(spec)
        if known is not None:
            _check_known(known, tokens_per_second, burst_capacity)
            return known
        if tokens_per_second is None:
            raise ValueError(f"limiter id {spec!r} needs tokens_per_second")
        burst = tokens_per_second if burst_capacity is None else burst_capacity
        return DistributedRateLimiterFactory.create_distributed(app, spec, tokens_per_second,
                                                                burst)
    if isinstance(spec, Iterable):
        return MultiTierRateLimiter(list(spec))
    raise TypeError(f"limiter must be a RateLimitingStrategy, an id string or tier specs, "
                    f"got {spec!r}")



def _check_known(known: DistributedRateLimiter, tokens_per_second: float | None,
                 burst_capacity: float | None) -> None:
    """A limiter id declared before: the rate and burst given again must be its own."""
    given = {"tokens_per_second": (tokens_per_second, known.config.rate),
             "burst_capacity": (burst_capacity, known.config.burst)}
    differ = [option for option, (value, declared) in given.items()
              if value is not None and value != declared]
    if differ:
        raise ConflictingOption(differ, f"limiter {known.rate_limiter_id!r} was declared with "
                                f"other {', '.join(differ)}: declare it once, or the same")
