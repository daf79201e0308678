"""A dynamic semaphore: at most ``limit.limit`` calls in flight, the limit adapting.

Example::

    limiter = ConcurrencyLimiter(GradientLimit(initial=20, max_limit=200))

    async with limiter.slot(timeout=5.0) as permit:   # waits FIFO, no polling
        response = await client.post(url, json=payload)
        if response.status in (429, 503):
            permit.dropped()        # overload: the limit backs off
        elif response.status >= 400:
            permit.ignore()         # says nothing about load
    # normal exit: success(); an exception: classify(exc) decides
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from .base import Clock, RateLimitTimeout, check_timeout
from .concurrency import ConcurrencyLimit

__all__ = ["CallPermit", "ConcurrencyLimitTimeout", "ConcurrencyLimiter", "ConcurrencyStats",
           "Outcome", "default_classify"]

#: How a finished call counts: a latency sample, an overload sample, or no sample.
Outcome = Literal["success", "dropped", "ignore"]


class ConcurrencyLimitTimeout(RateLimitTimeout):
    """``acquire()`` got no slot within ``timeout`` (an ``asyncio.TimeoutError``)."""


def default_classify(exc: BaseException) -> Outcome:
    """A timeout is an overload signal (``dropped``); any other exception is ``ignore``."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "dropped"
    return "ignore"


@dataclass(frozen=True, slots=True)
class ConcurrencyStats:
    """A snapshot: ``timeouts`` counts ``acquire`` calls that got no slot in time,
    ``rejected`` refused ``try_acquire`` calls; ``last_rtt`` is the latest sampled RTT
    (``None`` before the first sample)."""

    limit: int
    in_flight: int
    queued: int
    successes: int
    drops: int
    ignored: int
    timeouts: int
    rejected: int
    last_rtt: float | None


class CallPermit:
    """One slot of a :class:`ConcurrencyLimiter`, held from grant to release.

    Release it exactly once with :meth:`success`, :meth:`dropped` or :meth:`ignore`;
    later calls are no-ops. A permit never released holds its slot for good.
    """

    __slots__ = ("_limiter", "in_flight", "released", "start_time")

    def __init__(self, limiter: ConcurrencyLimiter, start_time: float, in_flight: int) -> None:
        self._limiter = limiter
        self.start_time = start_time
        self.in_flight = in_flight  # calls in flight when granted, this one included
        self.released = False

    def success(self) -> None:
        """The call finished normally: its RTT is a sample."""
        self._release("success")

    def dropped(self) -> None:
        """The call hit overload (timeout, 429, 503): a drop sample, the limit backs off."""
        self._release("dropped")

    def ignore(self) -> None:
        """Free the slot without a sample (an error unrelated to load, e.g. a bad request)."""
        self._release("ignore")

    def release(self, outcome: Outcome) -> None:
        """Release with an outcome given as a string."""
        if outcome not in ("success", "dropped", "ignore"):
            raise ValueError(f"outcome must be 'success', 'dropped' or 'ignore', got {outcome!r}")
        self._release(outcome)

    def _release(self, outcome: Outcome) -> None:
        if not self.released:
            self.released = True
            self._limiter._release(self, outcome)

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<CallPermit {state} start={self.start_time:.6f} in_flight={self.in_flight}>"


def _expire(fut: asyncio.Future[CallPermit], timeout: float) -> None:
    if not fut.done():
        fut.set_exception(ConcurrencyLimitTimeout(f"no call slot within {timeout} s"))


class ConcurrencyLimiter:
    """Lets at most ``limit.limit`` calls run at once; waiters are served FIFO.

    A released slot (or a limit that grew, via ``limit.on_change``) is handed straight
    to the head waiter, so ``try_acquire`` never jumps the queue and nothing polls.
    After the limit shrinks, calls already in flight finish normally; no new one
    starts until ``in_flight < limit``. ``classify`` maps an exception leaving
    :meth:`slot` to an outcome (default: :func:`default_classify`).
    """

    __slots__ = (
        "_clock", "_drops", "_ignored", "_in_flight", "_last_rtt", "_queue", "_rejected",
        "_successes", "_timeouts", "classify", "limit",
    )

    def __init__(
        self,
        limit: ConcurrencyLimit,
        *,
        clock: Clock = time.monotonic,
        classify: Callable[[BaseException], Outcome] = default_classify,
    ) -> None:
        if not isinstance(limit, ConcurrencyLimit):
            raise ValueError(f"limit must be a ConcurrencyLimit, got {limit!r}")
        self.limit = limit
        self.classify = classify
        self._clock = clock
        self._in_flight = 0
        self._queue: deque[asyncio.Future[CallPermit]] = deque()
        self._successes = self._drops = self._ignored = self._timeouts = self._rejected = 0
        self._last_rtt: float | None = None
        limit.on_change(self._on_limit_change)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        """How many ``acquire()`` callers wait."""
        return len(self._queue)

    def _grant(self) -> CallPermit:
        self._in_flight += 1
        return CallPermit(self, self._clock(), self._in_flight)

    def try_acquire(self) -> CallPermit | None:
        """A permit now, or ``None`` (also while others wait)."""
        if not self._queue and self._in_flight < self.limit.limit:
            return self._grant()
        self._rejected += 1
        return None

    async def acquire(self, timeout: float | None = None) -> CallPermit:
        """Wait FIFO for a slot; raises :class:`ConcurrencyLimitTimeout` after ``timeout``
        seconds (event-loop time). A cancelled waiter takes no slot."""
        if timeout is not None:
            timeout = check_timeout(timeout)
        if not self._queue and self._in_flight < self.limit.limit:
            return self._grant()
        if timeout == 0:
            self._timeouts += 1
            raise ConcurrencyLimitTimeout("no call slot free")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[CallPermit] = loop.create_future()
        self._queue.append(fut)
        handle = None if timeout is None else loop.call_later(timeout, _expire, fut, timeout)
        try:
            return await fut
        except ConcurrencyLimitTimeout:
            self._timeouts += 1
            raise
        except asyncio.CancelledError:
            # Granted, then cancelled before resuming: hand the slot on.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result().ignore()
            raise
        finally:
            if handle is not None:
                handle.cancel()
            if fut in self._queue:
                self._queue.remove(fut)

    @asynccontextmanager
    async def slot(
        self,
        timeout: float | None = None,
        *,
        classify: Callable[[BaseException], Outcome] | None = None,
    ) -> AsyncIterator[CallPermit]:
        """``async with limiter.slot() as permit:`` acquire, then release on exit.

        Normal exit is ``success()`` and an exception ``classify(exc)`` (this call's
        ``classify`` or the limiter's), unless the body released the permit itself.
        """
        permit = await self.acquire(timeout)
        try:
            yield permit
        except BaseException as exc:
            permit.release((classify or self.classify)(exc))
            raise
        permit.success()

    def _release(self, permit: CallPermit, outcome: Outcome) -> None:
        self._in_flight -= 1
        try:
            if outcome == "ignore":
                self._ignored += 1
                return
            rtt = self._clock() - permit.start_time
            self._last_rtt = rtt
            dropped = outcome == "dropped"
            if dropped:
                self._drops += 1
            else:
                self._successes += 1
            self.limit.on_sample(permit.start_time, rtt, permit.in_flight, dropped)
        finally:
            self._wake()

    def _on_limit_change(self, _new_limit: int) -> None:
        self._wake()

    def _wake(self) -> None:
        """Hand free slots to the waiters at the head of the queue."""
        queue = self._queue
        while queue and self._in_flight < self.limit.limit:
            fut = queue.popleft()
            if not fut.done():  # timed out or cancelled, not yet removed
                fut.set_result(self._grant())

    def stats(self) -> ConcurrencyStats:
        return ConcurrencyStats(
            limit=self.limit.limit,
            in_flight=self._in_flight,
            queued=len(self._queue),
            successes=self._successes,
            drops=self._drops,
            ignored=self._ignored,
            timeouts=self._timeouts,
            rejected=self._rejected,
            last_rtt=self._last_rtt,
        )

    def __repr__(self) -> str:
        return (f"<ConcurrencyLimiter limit={self.limit.limit} in_flight={self._in_flight} "
                f"queued={len(self._queue)}>")
