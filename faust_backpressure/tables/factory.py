"""``create_distributed`` and friends: the factory of the in-memory limiters, plus Kafka."""

from __future__ import annotations

from typing import Any

import faust

from faust_backpressure.limiters.factory import RateLimiterFactory
from faust_backpressure.limiters.multi_tier import MultiTierRateLimiter
from faust_backpressure.tables.lease import DistributedRateLimiter
from faust_backpressure.tables.service import limiter_channel

__all__ = ["DistributedRateLimiterFactory"]

_CHANNEL_OPTIONS = ("partitions", "secret", "max_clock_skew")


class DistributedRateLimiterFactory(RateLimiterFactory):
    """:class:`RateLimiterFactory` plus limiters whose bucket is shared by every worker.

    Call at import time of the app module (like ``app.agent``). Same ``rate_limiter_id`` = one
    shared bucket across all workers of ``app``; different ids are separate buckets.

    Example::

        limiter = DistributedRateLimiterFactory.create_distributed(
            app, "orders-api", tokens_per_second=1000, burst_capacity=2000)
    """

    @classmethod
    def create_distributed(
        cls,
        app: faust.App,
        rate_limiter_id: str,
        tokens_per_second: float,
        burst_capacity: float,
        *,
        lease_ttl: float = 2.0,
        per_consumer: bool = False,
        initial_tokens: float | None = None,
        request_timeout: float | None = None,
        fallback_rate: float | None = None,
        **channel_options: Any,
    ) -> DistributedRateLimiter:
        """A distributed token bucket. ``per_consumer=True``: rate and burst are per live
        worker using the limiter (the total scales with them). The owner leases each worker a
        share of the rate (see docs/distributed.md). ``channel_options``
        (``partitions``, ``secret``, ``max_clock_skew``) declare the app's channel on its first
        call; given again they must be the same, and the same id must be declared with the same
        options: else :class:`~faust_backpressure.errors.ConflictingOption` names them."""
        unknown = set(channel_options) - set(_CHANNEL_OPTIONS)
        if unknown:
            raise TypeError(f"unexpected options {sorted(unknown)}")
        channel = limiter_channel(app, **channel_options)
        limiter = DistributedRateLimiter(
            rate_limiter_id, tokens_per_second, burst_capacity, worker_id=channel.worker_id,
            lease_ttl=lease_ttl, request_timeout=request_timeout, per_consumer=per_consumer,
            initial_tokens=initial_tokens, fallback_rate=fallback_rate,
            storage_backend=f"kafka-table:{channel.changelog_topic_name}",
            wakeup=channel.wakeup(rate_limiter_id))
        return channel.add(limiter)

    create_with_kafka_storage = create_distributed

    @classmethod
    def create_multi_tier_distributed(
        cls,
        app: faust.App,
        global_limit: tuple[float, float],
        topic_limit: tuple[float, float] | None = None,
        consumer_limit: tuple[float, float] | None = None,
        *,
        rate_limiter_id: str = "multi-tier",
        **options: Any,
    ) -> MultiTierRateLimiter:
        """Tiers ``global``, ``topic``, ``consumer`` as distributed limiters with ids
        ``<rate_limiter_id>:<tier>``; the consumer tier is per consumer. The local check is
        atomic across tiers (all are asked before any is taken from)."""
        specs = {"global": global_limit, "topic": topic_limit, "consumer": consumer_limit}
        tiers = {
            name: cls.create_distributed(app, f"{rate_limiter_id}:{name}", rate, burst,
                                         per_consumer=name == "consumer", **options)
            for name, spec in specs.items() if spec is not None
            for rate, burst in [spec]
        }
        return MultiTierRateLimiter(tiers)
