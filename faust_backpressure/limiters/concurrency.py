"""Adaptive limits on calls in flight (Netflix concurrency-limits style).

A :class:`ConcurrencyLimit` turns samples of finished calls (start time, round-trip
time, calls in flight when it started, dropped or not) into an integer limit on
concurrent calls. :class:`~.concurrency_limiter.ConcurrencyLimiter` enforces it. Here the
interface, :class:`FixedLimit` and :class:`AIMDLimit` (loss-based); the limits learnt from
latency, :class:`~.latency_limits.GradientLimit` and :class:`~.latency_limits.VegasLimit`,
are in :mod:`.latency_limits`.

Pure Python: no clock of its own, time comes in the samples (``start_time + rtt`` is
the moment the call ended, on the limiter's clock).

Example::

    limit = GradientLimit(initial=20, max_limit=200)
    limit.on_change(lambda new: log.info("limit now %d", new))
    limit.on_sample(start_time=t0, rtt=0.012, in_flight=17, dropped=False)
    limit.limit   # -> int in [min_limit, max_limit]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from faust_backpressure.config.validation import check_int, check_number, is_number

__all__ = ["AIMDLimit", "ConcurrencyLimit", "FixedLimit", "LimitCallback"]

#: Called with the new integer limit, only when it changed.
LimitCallback = Callable[[int], None]


@runtime_checkable
class ConcurrencyLimit(Protocol):
    """What a concurrency limit algorithm implements.

    ``on_sample`` gets one finished call: ``start_time`` (limiter clock), ``rtt``
    (seconds), ``in_flight`` (calls in flight when it started, itself included) and
    ``dropped`` (an overload signal: timeout, 429, 503). ``on_change`` registers a
    callback called with the new ``limit`` whenever the integer limit changes (like
    Netflix's ``notifyOnChange``).
    """

    @property
    def limit(self) -> int: ...

    def on_sample(self, start_time: float, rtt: float, in_flight: int, dropped: bool) -> None: ...

    def on_change(self, callback: LimitCallback) -> None: ...


def _check_ratio(name: str, value: object) -> float:
    """A backoff ratio or a multiplicative decrease: a number in (0, 1)."""
    if not is_number(value) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


class _Limit:
    """Bounds, the current integer limit and change callbacks."""

    __slots__ = ("_callbacks", "_limit", "max_limit", "min_limit")

    def __init__(self, initial: int, min_limit: int, max_limit: int) -> None:
        self.min_limit = check_int("min_limit", min_limit, 1)
        self.max_limit = check_int("max_limit", max_limit, self.min_limit)
        check_int("initial", initial, self.min_limit)
        if initial > self.max_limit:
            raise ValueError(f"initial must be <= max_limit ({max_limit}), got {initial!r}")
        self._limit = initial
        self._callbacks: list[LimitCallback] = []

    @property
    def limit(self) -> int:
        """The current limit on calls in flight."""
        return self._limit

    def on_change(self, callback: LimitCallback) -> None:
        """Call ``callback(new_limit)`` each time the integer limit changes."""
        self._callbacks.append(callback)

    def _publish(self, value: float) -> None:
        new = min(self.max_limit, max(self.min_limit, int(value)))
        if new != self._limit:
            self._limit = new
            for callback in tuple(self._callbacks):
                callback(new)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} limit={self._limit}>"


class FixedLimit(_Limit):
    """A constant limit: a plain semaphore when given to the limiter.

    Example::

        limiter = ConcurrencyLimiter(FixedLimit(8))   # at most 8 calls at once
    """

    __slots__ = ()

    def __init__(self, limit: int) -> None:
        check_int("limit", limit, 1)
        super().__init__(limit, limit, limit)

    def on_sample(self, start_time: float, rtt: float, in_flight: int, dropped: bool) -> None:
        """Samples do not move a fixed limit."""


class AIMDLimit(_Limit):
    """Additive increase, multiplicative decrease, driven by drops (loss based).

    +1 for each successful call that started while at least half the limit was in use
    (an unused limit is not evidence that more is fine); ``* backoff_ratio`` on a drop
    or when ``rtt > timeout``. One backoff per round trip: drops of calls that started
    before the last backoff do not shrink the limit again (a burst of timeouts from
    one overload backs off once, as TCP does).

    Example::

        limit = AIMDLimit(initial=20, max_limit=100, timeout=2.0)
    """

    __slots__ = ("_recovery_end", "backoff_ratio", "timeout")

    def __init__(
        self,
        initial: int = 20,
        min_limit: int = 1,
        max_limit: int = 200,
        backoff_ratio: float = 0.9,
        timeout: float | None = None,
    ) -> None:
        super().__init__(initial, min_limit, max_limit)
        self.backoff_ratio = _check_ratio("backoff_ratio", backoff_ratio)
        self.timeout = None if timeout is None else check_number(
            "timeout", timeout, 0, strict=True)
        self._recovery_end = -math.inf

    def on_sample(self, start_time: float, rtt: float, in_flight: int, dropped: bool) -> None:
        if dropped or (self.timeout is not None and rtt > self.timeout):
            if start_time >= self._recovery_end:
                self._recovery_end = start_time + rtt
                self._publish(self._limit * self.backoff_ratio)
        elif in_flight * 2 >= self._limit:
            self._publish(self._limit + 1)
