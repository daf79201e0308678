"""A limiter whose rate follows feedback: PID toward a target, or AIMD."""

from __future__ import annotations

import time
from typing import Literal

from faust_backpressure.config.validation import check_number

from .base import Clock, RateLimiterStats, RateLimitingStrategy, check_rate
from .concurrency import _check_ratio

__all__ = ["AdaptiveRateLimiter"]

Mode = Literal["pid", "aimd"]


class AdaptiveRateLimiter:
    """Wraps any limiter and moves its rate between ``min_rate`` and ``max_rate``.

    Feedback is a load signal where *higher means more loaded* (consumer lag, CPU,
    downstream utilization...). Acquiring is delegated to ``inner``.

    * ``mode="pid"``: ``adjust(measured)`` runs a PID step toward ``target``. With
      ``error = target - measured`` the rate is
      ``base + (max_rate - min_rate) * (kp*error + ki*integral + kd*d/dt)``, clamped;
      gains are in fractions of the rate span per unit of error. The derivative is
      taken on the measurement (no kick when the target changes) and the integral is
      frozen while the output is saturated in the error's direction (anti-windup).
    * ``mode="aimd"``: ``on_success()`` adds ``additive_increase``, ``on_overload()``
      multiplies by ``multiplicative_decrease``.

    ``record_feedback(measured)`` dispatches on the mode (for AIMD: above ``target``
    is an overload). ``update_rate_limit`` clamps and restarts the PID from that rate.

    Example::

        limiter = AdaptiveRateLimiter(TokenBucketRateLimiter(500, 500), min_rate=10,
                                      max_rate=5000, target=10_000, kp=1e-4, ki=1e-5)
        limiter.record_feedback(consumer_lag)   # e.g. once a second
        await limiter.acquire()
    """

    __slots__ = (
        "_base", "_clock", "_integral", "_last_measured", "_last_time", "additive_increase",
        "inner", "kd", "ki", "kp", "max_rate", "min_rate", "mode", "multiplicative_decrease",
        "target",
    )

    def __init__(
        self,
        inner: RateLimitingStrategy,
        *,
        min_rate: float,
        max_rate: float,
        mode: Mode = "pid",
        target: float = 0.8,
        kp: float = 0.5,
        ki: float = 0.1,
        kd: float = 0.0,
        additive_increase: float | None = None,
        multiplicative_decrease: float = 0.5,
        clock: Clock = time.monotonic,
    ) -> None:
        if not isinstance(inner, RateLimitingStrategy):
            raise ValueError(f"inner must be a RateLimitingStrategy, got {inner!r}")
        if mode not in ("pid", "aimd"):
            raise ValueError(f"mode must be 'pid' or 'aimd', got {mode!r}")
        self.min_rate = check_rate("min_rate", min_rate)
        self.max_rate = check_rate("max_rate", max_rate)
        if self.max_rate < self.min_rate:
            raise ValueError(f"max_rate must be >= min_rate ({min_rate!r}), got {max_rate!r}")
        self.target = check_number("target", target)
        self.kp = check_number("kp", kp, 0)
        self.ki = check_number("ki", ki, 0)
        self.kd = check_number("kd", kd, 0)
        if additive_increase is None:
            additive_increase = max((self.max_rate - self.min_rate) * 0.05, self.min_rate * 0.05)
        self.additive_increase = check_rate("additive_increase", additive_increase)
        self.multiplicative_decrease = _check_ratio("multiplicative_decrease",
                                                    multiplicative_decrease)
        self.inner = inner
        self.mode: Mode = mode
        self._clock = clock
        self._base = self._integral = 0.0
        self._last_time: float | None = None
        self._last_measured: float | None = None
        self.update_rate_limit(inner.current_rate_limit)  # clamp into range, init PID

    # -- feedback ------------------------------------------------------------------------

    def _set(self, rate: float) -> float:
        rate = min(self.max_rate, max(self.min_rate, rate))
        if rate != self.inner.current_rate_limit:
            self.inner.update_rate_limit(rate)
        return rate

    def adjust(self, measured_value: float) -> float:
        """One PID step toward ``target``; returns the new rate."""
        now = self._clock()
        error = self.target - measured_value
        dt = 0.0 if self._last_time is None else max(0.0, now - self._last_time)
        derivative = 0.0
        if dt > 0.0 and self._last_measured is not None:
            derivative = -(measured_value - self._last_measured) / dt
        span = self.max_rate - self.min_rate
        integral = self._integral + error * dt
        raw = self._base + span * (self.kp * error + self.ki * integral + self.kd * derivative)
        # Anti-windup: don't integrate further into a saturated output.
        if not ((raw > self.max_rate and error > 0) or (raw < self.min_rate and error < 0)):
            self._integral = integral
        self._last_time, self._last_measured = now, measured_value
        return self._set(raw)

    def on_success(self) -> float:
        """AIMD additive increase; returns the new rate."""
        return self._set(self.inner.current_rate_limit + self.additive_increase)

    def on_overload(self) -> float:
        """AIMD multiplicative decrease; returns the new rate."""
        return self._set(self.inner.current_rate_limit * self.multiplicative_decrease)

    def record_feedback(self, measurement: float) -> float:
        """PID step, or for AIMD: decrease if ``measurement > target`` else increase."""
        if self.mode == "pid":
            return self.adjust(measurement)
        return self.on_overload() if measurement > self.target else self.on_success()

    @property
    def integral(self) -> float:
        return self._integral

    # -- protocol, delegated ---------------------------------------------------------------

    def try_acquire(self, permits: int = 1) -> bool:
        return self.inner.try_acquire(permits)

    async def try_acquire_async(self, permits: int = 1) -> bool:
        return await self.inner.try_acquire_async(permits)

    async def acquire(self, permits: int = 1, *, timeout: float | None = None) -> None:
        await self.inner.acquire(permits, timeout=timeout)

    def time_until_available(self, permits: int = 1) -> float:
        return self.inner.time_until_available(permits)

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def max_permits(self) -> float:
        """The inner limiter's: the rate changes here, the capacity does not."""
        return self.inner.max_permits

    @property
    def current_rate_limit(self) -> float:
        return self.inner.current_rate_limit

    @property
    def current_utilization(self) -> float:
        return self.inner.current_utilization

    def update_rate_limit(self, new_rate: float) -> None:
        """Set the rate (clamped to [min_rate, max_rate]); the PID restarts from it."""
        new_rate = check_rate("new_rate", new_rate)
        self._base = self._set(new_rate)
        self._integral = 0.0
        self._last_time = None
        self._last_measured = None

    def reset(self) -> None:
        """Reset the inner limiter and the controller state; the rate is kept."""
        self.inner.reset()
        self.update_rate_limit(self.inner.current_rate_limit)

    def stats(self) -> RateLimiterStats:
        return self.inner.stats()
