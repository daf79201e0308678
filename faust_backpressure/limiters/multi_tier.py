"""Several limiters (bulkheads) that must all agree before a permit is granted."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from faust_backpressure.config.validation import check_int

from .base import Clock, LimiterBase, RateLimitingStrategy, check_permits, check_rate
from .bucket import EPSILON, ONE_PERMIT, Bucket
from .token_bucket import TokenBucketRateLimiter

__all__ = ["MultiTierRateLimiter", "TierSpec"]

#: ``(name, tokens_per_second, burst_capacity)``: a tier built as a token bucket.
TierSpec = tuple[str, float, float]


class MultiTierRateLimiter(LimiterBase):
    """Named tiers (e.g. global / topic / consumer); a grant needs every tier's consent.

    **Atomic.** ``try_acquire(n)`` first asks every tier whether ``n`` permits are
    available (``time_until_available(n) == 0``, which consumes nothing) and only
    then takes from all of them. A refusal by one tier therefore takes nothing from
    the others. Both steps run without an ``await`` in between, so within one
    asyncio loop (one thread) nothing can interleave. The tiers belong to this
    limiter: do not acquire from them directly, or a tier could refuse between the
    check and the take (that raises ``RuntimeError``).

    **Fast path.** When every tier is a plain :class:`TokenBucketRateLimiter` sharing
    this limiter's clock (always the case for ``(name, rate, burst)`` specs), the check
    and the take run inline over the tiers' state (no per-tier method calls), with one
    clock read: each tier's refill is computed, and only if every tier holds ``n``
    tokens are ``n`` taken from all of them (a refusal only brings the refill up to
    date, which changes no tier's ``current_tokens``). Other tiers go through their
    public methods.

    ``acquire()`` queues FIFO in this limiter and sleeps until the slowest tier can
    serve the request. Short waits are stretched to ``min_wait`` at most until the
    limiter as a whole is full (every tier holds the smallest tier's capacity), see
    ``_full_delay``.

    Rates: ``current_rate_limit`` is the smallest tier rate (the bottleneck).
    ``update_rate_limit(rate, tier)`` changes one tier; with ``tier=None`` every tier
    is scaled by the same factor so that the bottleneck becomes ``rate``.
    ``restore_rate_limit`` returns to the configured rates.

    Example::

        limiter = MultiTierRateLimiter([("global", 10_000, 20_000), ("topic", 1_000, 2_000)])
        if limiter.try_acquire():
            ...
        limiter.update_rate_limit(0.5, tier="topic")   # shed load on one tier
        limiter.restore_rate_limit("topic")
    """

    __slots__ = ("_buckets", "_configured", "_tiers", "_tiers_view")

    def __init__(
        self,
        tiers: Mapping[str, RateLimitingStrategy] | Iterable[TierSpec],
        *,
        clock: Clock = time.monotonic,
        utilization_window: float = 1.0,
    ) -> None:
        built: dict[str, RateLimitingStrategy] = {}
        if isinstance(tiers, Mapping):
            for name, tier in tiers.items():
                if not isinstance(tier, RateLimitingStrategy):
                    raise ValueError(f"tier {name!r} must be a RateLimitingStrategy, got {tier!r}")
                built[str(name)] = tier
        else:
            for spec in tiers:
                name, rate, burst = spec
                if name in built:
                    raise ValueError(f"tiers: duplicate tier name {name!r}")
                built[name] = TokenBucketRateLimiter(
                    rate, burst, rate_limiter_id=name, clock=clock,
                    utilization_window=utilization_window,
                )
        if not built:
            raise ValueError("tiers must name at least one tier")
        self._tiers = built
        self._tiers_view = MappingProxyType(built)
        self._configured = {name: t.current_rate_limit for name, t in built.items()}
        # The tiers handled inline (see try_acquire), or () to use their public methods.
        # Exact type: a subclass may override try_acquire and must be asked.
        tiers_ = tuple(t for t in built.values() if t.__class__ is TokenBucketRateLimiter)
        self._buckets: tuple[tuple[TokenBucketRateLimiter, Bucket], ...] = (
            tuple((t, t.bucket) for t in tiers_)
            if len(tiers_) == len(built) and all(t.clock is clock for t in tiers_)
            else ()
        )
        super().__init__(clock, utilization_window)
        for tier in built.values():
            if isinstance(tier, LimiterBase):
                # Our waiters sleep in our queue: a tier whose timing changes (a distributed
                # tier's lease granted, a rate update) wakes them, as it would its own.
                tier._join(self._notify)

    def _tier(self, name: str) -> RateLimitingStrategy:
        try:
            return self._tiers[name]
        except KeyError:
            raise ValueError(f"tier must be one of {sorted(self._tiers)}, got {name!r}") from None

    def _check_permits(self, permits: int) -> int:
        if permits == 1 and permits.__class__ is int:
            return 1  # every tier holds at least one permit
        check_int("permits", permits, 1)
        if self._buckets:
            # What each tier's time_until_available would check, without the refill at
            # a later clock reading than the caller's ``now`` (time must not go back).
            for _, b in self._buckets:
                check_permits(permits, b.capacity)
            return permits
        for tier in self._tiers.values():
            tier.time_until_available(permits)  # raises if over that tier's capacity
        return permits

    def _max_permits(self) -> float:
        """The smallest tier capacity: the most one request could ever get.

        Only for waiting (``_full_delay``); validation is done by the tiers instead.
        Raises ``NotImplementedError`` if a tier is not a :class:`LimiterBase`.
        """
        out = math.inf
        for tier in self._tiers.values():
            if not isinstance(tier, LimiterBase):
                raise NotImplementedError
            out = min(out, tier._max_permits())
        return out

    # The hot path, for token-bucket tiers: one clock read, no method calls. It mirrors
    # LimiterBase.try_acquire -> _take -> _admit with each tier's Bucket.refill inlined; a
    # window to roll (here or in a tier) or a queue falls back to _try_slow, which ends
    # in _admit with the same ``now``.
    def try_acquire(self, permits: int = 1) -> bool:
        """Take ``permits`` from every tier now, or refuse now and take from none."""
        now = self._clock()
        if permits == 1 and permits.__class__ is int and now < self._fast_until:
            buckets = self._buckets
            if buckets:
                for tier, b in buckets:
                    if now >= tier._fast_until:
                        break
                    tokens = b.level + (now - b.at) * b.rate
                    if tokens > b.capacity:
                        tokens = b.capacity
                    b.level = tokens
                    b.at = now
                    if tokens < ONE_PERMIT:
                        self._denied += 1
                        return False
                else:
                    for tier, b in buckets:
                        b.level -= 1.0
                        tier._granted += 1
                    self._granted += 1
                    return True
        return self._try_slow(permits, now)

    def _admit(self, permits: int, now: float) -> bool:
        buckets = self._buckets
        if buckets:
            need = permits - EPSILON
            for tier, b in buckets:
                # misuse if it cannot catch up: the tier has waiters of its own, ask it
                if now >= tier._fast_until and not tier._catch_up(now):
                    return self._admit_generic(permits)
                if b.refill(now) < need:
                    return False
            for tier, b in buckets:
                b.level -= permits
                tier._granted += permits
            return True
        return self._admit_generic(permits)

    def _admit_generic(self, permits: int) -> bool:
        tiers = self._tiers
        short = False
        for tier in tiers.values():
            # Ask every tier, not just up to the first short one: a lease-based (distributed)
            # tier takes the question as demand and asks its owner, all tiers in parallel.
            if tier.time_until_available(permits) > 0.0:
                short = True
        if short:
            return False
        for name, tier in tiers.items():
            if not tier.try_acquire(permits):
                raise RuntimeError(f"tier {name!r} refused after reporting availability; "
                                   "tiers of a MultiTierRateLimiter must not be shared")
        return True

    def _delay(self, permits: float, now: float) -> float:
        buckets = self._buckets
        if buckets:
            return max(0.0, max(b.delay(permits, now) for _, b in buckets))
        return max(tier.time_until_available(int(permits)) for tier in self._tiers.values())

    def _full_delay(self, now: float) -> float:
        # Stretch a wait at most until every tier holds the smallest tier's capacity: until
        # then the tier holding requests back keeps filling, so nothing it could grant is
        # lost (a tier that overflows is not the bottleneck). Stopping at the first full tier
        # would end coalescing whenever a roomy tier stays full (docs/limiters.md, "Waiting").
        try:
            full = self._max_permits()
        except NotImplementedError:
            return 0.0  # a tier we cannot inspect: no stretching
        if self._buckets:
            return self._delay(full, now)
        out = 0.0
        for tier in self._tiers.values():
            assert isinstance(tier, LimiterBase)  # else _max_permits raised
            out = max(out, tier._delay(full, tier.clock()))
        return out

    @property
    def max_permits(self) -> float:
        """The smallest tier's ``max_permits``: the most one request could ever get."""
        return min(tier.max_permits for tier in self._tiers.values())

    @property
    def tiers(self) -> Mapping[str, RateLimitingStrategy]:
        """Read-only mapping name -> tier limiter, in check order."""
        return self._tiers_view

    @property
    def current_rate_limit(self) -> float:
        return min(t.current_rate_limit for t in self._tiers.values())

    @property
    def current_utilization(self) -> float:
        """Utilization of the busiest tier."""
        return max(t.current_utilization for t in self._tiers.values())

    def get_average_utilization(self) -> float:
        """Mean of the tiers' utilizations."""
        return sum(t.current_utilization for t in self._tiers.values()) / len(self._tiers)

    def get_current_rate_limit(self, tier: str) -> float:
        return self._tier(tier).current_rate_limit

    def update_rate_limit(self, new_rate: float, tier: str | None = None) -> None:
        """Set one tier's rate; ``tier=None`` scales all so the bottleneck becomes ``new_rate``."""
        new_rate = check_rate("new_rate", new_rate)
        if tier is not None:
            self._tier(tier).update_rate_limit(new_rate)
        else:
            factor = new_rate / self.current_rate_limit
            for t in self._tiers.values():
                t.update_rate_limit(t.current_rate_limit * factor)
        self._notify()

    def restore_rate_limit(self, tier: str | None = None) -> None:
        """Back to the configured rate of ``tier`` (all tiers if None)."""
        names = list(self._tiers) if tier is None else [tier]
        for name in names:
            self._tier(name).update_rate_limit(self._configured[name])
        self._notify()

    def reset(self) -> None:
        """Reset every tier and this limiter's counters; rates are kept."""
        for t in self._tiers.values():
            t.reset()
        self._reset_counters(self._clock())
        self._notify()
