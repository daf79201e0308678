"""Shared pieces of the limiters: protocol, errors, validation, FIFO waiting.

Everything here is pure Python: no Faust, no I/O. Time comes from an injectable
``clock`` (``time.monotonic`` by default) so tests can drive a virtual clock.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from faust_backpressure.config.validation import check_int, check_number, is_number
from faust_backpressure.errors import BackpressureError

__all__ = ["Clock", "LimiterBase", "RateLimitTimeout", "RateLimiterStats",
           "RateLimitingStrategy", "check_capacity", "check_permits", "check_rate", "check_timeout",
           "counter", "gauge"]

#: A function returning seconds as a float, monotonic (``time.monotonic`` by default).
Clock = Callable[[], float]

_NEG_INF = -math.inf


# -- stats fields that are metrics too -------------------------------------------------------
# The views show a stats dataclass's fields as they are (JSON) and export each field made with
# counter() or gauge() as ``<prefix>_<field>[_total]``, so a new counter is one field.


def counter(help_text: str) -> dict[str, str]:
    """``field(metadata=counter(...))``: the field is also a Prometheus counter
    (``<prefix>_<field>_total``)."""
    return {"metric": "counter", "help": help_text}


def gauge(help_text: str) -> dict[str, str]:
    """``field(metadata=gauge(...))``: the field is also a Prometheus gauge
    (``<prefix>_<field>``)."""
    return {"metric": "gauge", "help": help_text}


class RateLimitTimeout(BackpressureError, asyncio.TimeoutError):
    """``acquire()`` could not get its permits before ``timeout`` elapsed.

    A subclass of :class:`asyncio.TimeoutError` (the builtin :class:`TimeoutError`
    on Python 3.11+), so ``except TimeoutError`` catches it.
    """


@dataclass(frozen=True, slots=True)
class RateLimiterStats:
    """A snapshot of a limiter's counters.

    ``granted`` counts permits, ``denied`` counts refused ``try_acquire`` calls,
    ``waits`` counts ``acquire`` calls that had to queue and ``sleeps`` how many
    times queued waiters parked (O(1) per wait: there is no polling).
    ``tokens`` is what could be taken now, or ``None`` if not meaningful. Fields made
    with :func:`counter` or :func:`gauge` are Prometheus metrics too
    (``limiter_<field>[_total]``).
    """

    granted: int = field(metadata=counter("Permits granted."))
    denied: int = field(metadata=counter("try_acquire refusals."))
    waits: int = field(metadata=counter("acquire calls that had to wait."))
    sleeps: int
    rate: float = field(metadata=gauge("Permits per second the limiter allows now."))
    utilization: float = field(metadata=gauge("Share of the allowed permits taken recently."))
    tokens: float | None = None


@runtime_checkable
class RateLimitingStrategy(Protocol):
    """What every limiter implements (in-memory now, distributed later).

    ``time_until_available(n) == 0.0`` means ``n`` permits exist right now; it
    ignores callers queued in ``acquire()`` (``try_acquire`` refuses while any wait).
    ``name`` labels the limiter in logs, headers and metrics (its id when it has one);
    ``max_permits`` is the most one request may ask for (``math.inf``: no fixed bound),
    so callers split larger requests.
    """

    @property
    def name(self) -> str: ...

    @property
    def max_permits(self) -> float: ...

    def try_acquire(self, permits: int = 1) -> bool: ...

    async def try_acquire_async(self, permits: int = 1) -> bool: ...

    async def acquire(self, permits: int = 1, *, timeout: float | None = None) -> None: ...

    def time_until_available(self, permits: int = 1) -> float: ...

    @property
    def current_rate_limit(self) -> float: ...

    @property
    def current_utilization(self) -> float: ...

    def update_rate_limit(self, new_rate: float) -> None: ...

    def reset(self) -> None: ...

    def stats(self) -> RateLimiterStats: ...


# -- validation ------------------------------------------------------------------------------


def check_rate(name: str, value: float) -> float:
    """Return ``value`` as float if it is a finite number > 0, else raise ValueError."""
    return check_number(name, value, 0, strict=True)


def check_capacity(name: str, value: float) -> float:
    """Return ``value`` as float if it is a finite number >= 1, else raise ValueError."""
    return check_number(name, value, 1)


def check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if not is_number(timeout) or math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be None or a number >= 0, got {timeout!r}")
    return float(timeout)


def check_permits(permits: int, limit: float) -> int:
    """``permits`` must be an int in ``[1, limit]``: a larger request could never succeed."""
    check_int("permits", permits, 1)
    if permits > limit:
        raise ValueError(
            f"permits must be <= the capacity ({limit:g}) or it could never succeed, "
            f"got {permits}"
        )
    return permits


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Waiter:
    __slots__ = ("permits", "wake")

    def __init__(self, permits: int) -> None:
        self.permits = permits
        self.wake: asyncio.Future[None] | None = None


# -- shared base -----------------------------------------------------------------------------


class LimiterBase(ABC):
    """Common machinery: stats, utilization window and FIFO ``acquire``.

    Subclasses implement ``_admit`` (take now or not, no queue check), ``_delay``
    (seconds until ``_admit`` could succeed, from the injected clock) and
    ``_max_permits``.

    A limiter made of others (a :class:`MultiTierRateLimiter`'s tiers) queues their callers
    itself and uses this protected interface of its parts, nothing else of their insides:
    the hooks ``_delay`` and ``_max_permits``, :meth:`_join` and :meth:`_catch_up`; and, in
    its inline path over token-bucket parts (a method call per part there would cost about a
    third of its ``try_acquire``), ``_fast_until`` (before it, nothing waits in the part and
    its utilization window is not due) and ``_granted`` (permits granted: the owner adds
    what it takes from the part's bucket).

    Utilization is the share of the current rate granted over roughly the last
    ``utilization_window`` seconds, estimated from two fixed windows (previous one
    weighted by how much of it still overlaps), so it needs O(1) memory.
    """

    __slots__ = (
        "_clock",
        "_denied",
        "_fast_until",
        "_granted",
        "_on_timing_change",
        "_queue",
        "_sleeps",
        "_uw",
        "_uw_base",
        "_uw_end",
        "_uw_prev",
        "_waits",
    )

    def __init__(self, clock: Clock, utilization_window: float) -> None:
        self._clock = clock
        self._uw = check_rate("utilization_window", utilization_window)
        self._queue: deque[_Waiter] = deque()
        # Set by a limiter this one is a part of (a tier of a MultiTierRateLimiter), whose
        # waiters sleep in its own queue and must wake when this part's timing changes.
        self._on_timing_change: Callable[[], None] | None = None
        self._reset_counters(clock())

    def _reset_counters(self, now: float) -> None:
        self._granted = self._denied = self._waits = self._sleeps = 0
        self._uw_base = self._uw_prev = 0
        self._uw_end = now + self._uw
        self._fast_until = self._uw_end if not self._queue else _NEG_INF

    # -- subclass hooks --------------------------------------------------------------------

    @abstractmethod
    def _admit(self, permits: int, now: float) -> bool: ...

    @abstractmethod
    def _delay(self, permits: float, now: float) -> float: ...

    @abstractmethod
    def _max_permits(self) -> float: ...

    @property
    @abstractmethod
    def current_rate_limit(self) -> float: ...

    @abstractmethod
    def update_rate_limit(self, new_rate: float) -> None: ...

    @abstractmethod
    def reset(self) -> None: ...

    def _tokens(self) -> float | None:
        return None

    # -- as a part of another limiter (see the class docstring) ----------------------------

    def _join(self, on_timing_change: Callable[[], None]) -> None:
        """Become a part of a limiter whose waiters sleep in its own queue: they must wake
        (``on_timing_change``) when this part's timing changes, as its own would (a rate
        update, a reset, a distributed part's lease granted)."""
        self._on_timing_change = on_timing_change

    def _catch_up(self, now: float) -> bool:
        """Before the owner takes from this part's state at ``now`` >= ``_fast_until``: roll
        the utilization window as this part's own ``_take`` would. ``False`` (nothing done)
        if callers wait in this part's own queue: it was used directly, ask it through its
        public methods."""
        if self._queue:
            return False
        if now >= self._uw_end:
            self._roll(now)
        return True

    #: Shortest wait, in seconds: coalesces wake-ups (the OS rounds sub-millisecond timers
    #: up anyway, and each wake-up costs event-loop CPU). A wait is never stretched past the
    #: moment the limiter would be full (``_full_delay``), so the rate stays exact.
    min_wait: ClassVar[float] = 0.004

    def _full_delay(self, now: float) -> float:
        """Seconds until waiting longer would waste capacity (limiter full)."""
        return self._delay(self._max_permits(), now)

    def _check_permits(self, permits: int) -> int:
        return check_permits(permits, self._max_permits())

    # -- core ------------------------------------------------------------------------------

    def _roll(self, now: float) -> None:
        # Close the utilization window; all grants since _uw_base happened before _uw_end,
        # because the first call at/after _uw_end rolls before it grants.
        uw, end = self._uw, self._uw_end
        if now < end + uw:
            self._uw_prev = self._granted - self._uw_base
            end += uw
        else:
            self._uw_prev = 0
            end += uw * (math.floor((now - end) / uw) + 1)
        self._uw_base = self._granted
        self._uw_end = end
        self._fast_until = end if not self._queue else _NEG_INF

    def _take(self, permits: int, now: float) -> bool:
        if now >= self._uw_end:
            self._roll(now)
        if self._admit(permits, now):
            self._granted += permits
            return True
        return False

    def _try_slow(self, permits: int, now: float) -> bool:
        permits = self._check_permits(permits)
        if not self._queue and self._take(permits, now):
            return True
        self._denied += 1
        return False

    def try_acquire(self, permits: int = 1) -> bool:
        """Take ``permits`` now or refuse now; refuses while ``acquire()`` callers queue."""
        return self._try_slow(permits, self._clock())

    async def try_acquire_async(self, permits: int = 1) -> bool:
        """Same as :meth:`try_acquire` (in memory there is no I/O to await)."""
        return self.try_acquire(permits)

    def time_until_available(self, permits: int = 1) -> float:
        """Seconds until ``permits`` exist (0.0 = now), ignoring queued waiters."""
        permits = self._check_permits(permits)
        return max(0.0, self._delay(permits, self._clock()))

    @property
    def current_utilization(self) -> float:
        """Granted / (rate * window) over about the last ``utilization_window`` s, in [0, 1]."""
        now, uw, end = self._clock(), self._uw, self._uw_end
        cur, prev = self._granted - self._uw_base, self._uw_prev
        if now >= end:
            if now < end + uw:
                prev, cur, end = cur, 0, end + uw
            else:
                prev = cur = 0
        if not cur and not prev:
            return 0.0
        frac = min(1.0, max(0.0, (now - (end - uw)) / uw))
        estimate = prev * (1.0 - frac) + cur
        return min(1.0, estimate / (self.current_rate_limit * uw))

    @property
    def name(self) -> str:
        """A label for logs, headers and metrics: the class name unless a subclass has an id."""
        return type(self).__name__

    @property
    def max_permits(self) -> float:
        """The most permits one request may ask for (the capacity)."""
        return self._max_permits()

    @property
    def clock(self) -> Clock:
        """The clock this limiter reads (``time.monotonic`` unless one was given)."""
        return self._clock

    @property
    def queued_waiters(self) -> int:
        """How many ``acquire()`` callers are waiting."""
        return len(self._queue)

    def stats(self) -> RateLimiterStats:
        return RateLimiterStats(
            granted=self._granted,
            denied=self._denied,
            waits=self._waits,
            sleeps=self._sleeps,
            rate=self.current_rate_limit,
            utilization=self.current_utilization,
            tokens=self._tokens(),
        )

    # -- waiting ---------------------------------------------------------------------------

    def _notify(self) -> None:
        """Timing changed (rate update, reset, a lease granted): let the head waiter, and
        the waiters of a limiter this one is a part of, recompute now."""
        if self._queue:
            wake = self._queue[0].wake
            if wake is not None:
                _wake(wake)
        if self._on_timing_change is not None:
            self._on_timing_change()

    async def acquire(self, permits: int = 1, *, timeout: float | None = None) -> None:
        """Wait until ``permits`` are granted, first come first served.

        Sleeps exactly until the permits can exist (no polling), rechecking the
        injected clock on wake-up. Raises :class:`RateLimitTimeout` after ``timeout``
        seconds (event-loop time). A cancelled waiter takes nothing.
        """
        if permits != 1 or permits.__class__ is not int:
            permits = self._check_permits(permits)
        if timeout is not None:
            timeout = check_timeout(timeout)
        if not self._queue and self._take(permits, self._clock()):
            return
        self._waits += 1
        await self._wait(permits, timeout)

    async def _wait(self, permits: int, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        queue = self._queue
        me = _Waiter(permits)
        queue.append(me)
        self._fast_until = _NEG_INF
        try:
            while True:
                delay: float | None = None
                if queue[0] is me:
                    now = self._clock()
                    if self._take(permits, now):
                        return
                    delay = max(0.0, self._delay(permits, now))
                    if delay < self.min_wait:
                        delay = max(delay, min(self.min_wait, self._full_delay(now)))
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise RateLimitTimeout(
                            f"could not acquire {permits} permit(s) within {timeout} s"
                        )
                    delay = remaining if delay is None else min(delay, remaining)
                me.wake = wake = loop.create_future()
                handle = None if delay is None else loop.call_later(delay, _wake, wake)
                self._sleeps += 1
                try:
                    await wake
                finally:
                    me.wake = None
                    if handle is not None:
                        handle.cancel()
        finally:
            was_head = queue[0] is me
            queue.remove(me)
            if not queue:
                self._fast_until = self._uw_end
            elif was_head:
                self._notify()
