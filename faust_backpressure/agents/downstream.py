"""A guard for one system the stream calls: pause, circuit breaker, rate, calls in flight.

Declared once per dependency (``bp.downstream(...)``), used at the call site::

    payments = bp.downstream("payments-api", max_concurrency=64)

    async for order in stream:
        await payments.run(post_charge, order)   # waits, retries slow-downs and outages

    async with payments.call():                  # one attempt, outcome recorded
        ...

A call waits while a slow-down is in force or the breaker is open (it never fails for that),
then for a rate permit (if the guard has a limiter) and a slot among the calls in flight (the
learnt limit). See ``docs/downstream.md`` for the outcomes and what each does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from faust_backpressure.agents.background import BackgroundTasks
from faust_backpressure.agents.downstream_types import (
    RECOVERY_MIN_OPEN,
    DownstreamStats,
    Publisher,
    WaitAborted,
    is_unavailable,
)
from faust_backpressure.agents.flow import Stopped, StopWatch
from faust_backpressure.agents.latency import LATENCY_BUCKETS, LatencyWindow
from faust_backpressure.agents.quota_gate import LocalQuota, QuotaGate, SharedQuota
from faust_backpressure.agents.slow_down import (
    DependencyUnavailable,
    SlowDown,
    from_http,
    parse_retry_after,
    quota_from_headers,
)
from faust_backpressure.config.validation import check_number
from faust_backpressure.limiters import RateLimitingStrategy
from faust_backpressure.limiters.base import Clock
from faust_backpressure.limiters.circuit_breaker import BreakerState, CircuitBreaker
from faust_backpressure.limiters.concurrency import AIMDLimit, ConcurrencyLimit, FixedLimit
from faust_backpressure.limiters.concurrency_limiter import CallPermit, ConcurrencyLimiter
from faust_backpressure.limiters.latency_limits import GradientLimit, VegasLimit
from faust_backpressure.limiters.quota import PROBE_AFTER, QuotaLearner

__all__ = ["LATENCY_BUCKETS", "Downstream", "DownstreamStats", "WaitAborted",
           "build_downstream", "is_unavailable"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Breaker states in which any call may go out (in the others, only a probe of the round).
_PASSING = frozenset({BreakerState.CLOSED, BreakerState.FORCED_CLOSED})
#: The learnt limits ``build_downstream`` makes by name, from (initial, min, max).
_LEARNT_LIMITS: dict[str, Callable[[int, int, int], ConcurrencyLimit]] = {
    "gradient": GradientLimit, "aimd": AIMDLimit, "vegas": VegasLimit}


class Downstream:
    """The guard of one dependency on this worker; see the module's docstring."""

    def __init__(self, name: str, *, limit: ConcurrencyLimit, breaker: CircuitBreaker,
                 rate: RateLimitingStrategy | None = None, default_retry_after: float = 1.0,
                 max_retry_after: float = 300.0,
                 unavailable: Callable[[BaseException], bool] = is_unavailable,
                 publish: Publisher | None = None, clock: Clock = time.monotonic,
                 wall_clock: Clock = time.time, max_concurrency: int | None = None,
                 quota: QuotaGate | QuotaLearner | None = None,
                 coalesce: float = 1.0, publish_recovery: Publisher | None = None,
                 publish_failing: Publisher | None = None) -> None:
        """``max_concurrency``: the most calls in flight the limit may allow (how many events
        a pipeline keeps in progress); default the limit's ``max_limit``. ``quota``: learns
        the rate the system allows from its slow-downs (a learner alone: this worker's own
        rate, see :mod:`.quota_gate`; None: pauses only)."""
        self.name = name
        self.max_concurrency = int(max_concurrency if max_concurrency is not None
                                   else getattr(limit, "max_limit", limit.limit))
        self.breaker = breaker
        self.rate = rate
        self.concurrency = ConcurrencyLimiter(limit, clock=clock)
        self.default_retry_after = check_number("default_retry_after", default_retry_after, 0)
        self.max_retry_after = check_number("max_retry_after", max_retry_after, 0)
        self.unavailable = unavailable
        #: Set by the installer: sends a slow-down to every worker (None: this worker only).
        self.publish = publish
        #: Set by the installer: tells every worker this one's probes passed, so theirs probe
        #: now, not at the end of their own wait (docs/downstream.md, "Recovery news").
        self.publish_recovery = publish_recovery
        #: Set by the installer: tells every worker this one's breaker opened on failures,
        #: ``(dependency, until)``, so theirs open too (docs/downstream.md, "Outage news").
        self.publish_failing = publish_failing
        #: Set by the installer: Faust's "flow stopped" event, for calls with no ``stopped``
        #: of their own (a plain agent's: see ``_permits``).
        self.flow_stopped: Callable[[], asyncio.Event | None] | None = None
        self._opened_at = -math.inf  # wall clock: older recovery news is stale
        self._ok_sent_at = -math.inf  # wall clock: failures news older than it is stale
        self._outage = False  # failures opened the breaker and it has not closed since
        self._background = BackgroundTasks(f"downstream {name}")
        self._stop_watch = StopWatch()
        self._clock, self._wall = clock, wall_clock
        self._paused_until = 0.0  # wall clock: records carry it between workers
        self.coalesce = check_number("coalesce", coalesce, 0)
        self.quota: QuotaGate | None = (LocalQuota(quota, clock=clock)
                                        if isinstance(quota, QuotaLearner) else quota)
        self.outcomes: Counter[str] = Counter()
        self._latency = LatencyWindow()  # successful calls only
        breaker.on_transition(self._transition)

    def _transition(self, old: BreakerState, new: BreakerState) -> None:
        log.warning("breaker %s: %s (was %s)", self.name, new.value, old.value)
        if new is BreakerState.OPEN:
            self._opened_at = self._wall()
            if self.breaker.failing and not self._outage:  # not a slow-down's hold
                self._outage = True  # (set before tripping on news: not published again)
                self._publish_failing()
        elif new is BreakerState.CLOSED and self._outage:
            self._outage = False
            if self.quota is not None:
                # the outage's probes kept the learner's interval open: measure afresh. Not
                # after a slow-down's pause (it also opens the breaker): that would leave
                # nothing measured for the next 429 (docs/downstream.md, "Known limits")
                self.quota.recovered()
        if (old is BreakerState.HALF_OPEN and new is BreakerState.CLOSED
                and self.publish_recovery is not None):
            # on failure the others find it back at the end of their own wait
            self._background.spawn(self.publish_recovery(self.name, self._wall()),
                                   "publishing the recovery")

    async def stop(self) -> None:
        """The worker stops: cancel the records still being published."""
        await self._background.stop()
        self._stop_watch.stop()
        if isinstance(self.quota, SharedQuota):
            await self.quota.stop()

    def _publish_failing(self) -> None:
        if self.publish_failing is not None:
            until = self._wall() + self.breaker.time_until_allowed()
            self._background.spawn(self.publish_failing(self.name, until),
                                   "publishing the failures")

    def failing_until(self, at: float, until: float, *, source: str = "local") -> bool:
        """Another worker's breaker opened on failures at ``at``, open until ``until`` (wall
        clock): this one opens as on its own verdict (:meth:`CircuitBreaker.trip`). Stale
        news, counted as ``stale_news``: ``until`` past, or a call sent here since ``at``
        succeeded. Ignored when already in the outage and under an operator's state."""
        if until <= self._wall() or at < self._ok_sent_at:
            self.outcomes["stale_news"] += 1
            log.info("downstream %s: failing %s, stale news", self.name, source)
            return False
        if self._outage:
            log.info("downstream %s: failing %s, the same outage", self.name, source)
            return False
        self._outage = True
        if not self.breaker.trip():
            self._outage = False
            return False
        self.outcomes["opened_on_news"] += 1
        log.warning("downstream %s: failing %s, breaker %s", self.name, source,
                    self.breaker.state.value)
        return True

    def recovered_at(self, at: float, *, source: str = "local") -> bool:
        """Another worker's probes found the system back at ``at`` (wall clock): if the
        breaker opened before then and no slow-down holds it, it probes now (at most
        :data:`RECOVERY_MIN_OPEN` s after it opened) instead of at the end of its wait."""
        if at < self._opened_at or self.paused_for > 0:
            return False
        if not self.breaker.probe_soon(RECOVERY_MIN_OPEN):
            return False
        self.outcomes["probed_on_news"] += 1
        log.info("downstream %s: back %s, probing now", self.name, source)
        return True

    # -- what the call site raises ---------------------------------------------------------

    def slow_down(self, retry_after: float | str | None = None) -> SlowDown:
        """``raise payments.slow_down(retry_after=resp.headers.get("Retry-After"))``."""
        return SlowDown(retry_after)

    def slow_down_from_http(self, status: int, retry_after: str | float | None = None
                            ) -> Exception:
        """The exception for an HTTP answer (429/503 -> slow down or unavailable)."""
        return from_http(status, retry_after)

    def unavailable_error(self, reason: str = "unavailable") -> DependencyUnavailable:
        return DependencyUnavailable(reason)

    def read_quota_headers(self, headers: Mapping[str, str] | Iterable[tuple[str, str]], *,
                           window: float | None = None) -> float | None:
        """Pass every answer's headers: a quota the system announces (``RateLimit-Policy``,
        or ``X-RateLimit-Limit`` per ``window`` seconds, see :func:`quota_from_headers`) is
        kept to at once, a raised one too (without it only probing finds that). Returns the
        announced quota (calls/s) or None."""
        quota = quota_from_headers(headers, window=window)
        if quota is not None and self.quota is not None:
            self.quota.announced(quota)
        return quota

    # -- pauses ----------------------------------------------------------------------------

    @property
    def paused_for(self) -> float:
        """Seconds left of the slow-down in force (0: none)."""
        return max(0.0, self._paused_until - self._wall())

    def pause_until(self, until: float, *, source: str = "local") -> bool:
        """Pause calls until ``until`` (wall clock), e.g. from another worker's slow-down.
        A slow-down that ends within ``coalesce`` seconds of the pause in force is the same
        episode (calls sent before the pause answering late): False, nothing changes."""
        now = self._wall()
        seconds = min(until - now, self.max_retry_after)
        if seconds <= 0 or (self._paused_until > now
                            and until <= self._paused_until + self.coalesce):
            if source != "local":
                log.info("downstream %s: slow-down %s, the same pause", self.name, source)
            return False
        self._paused_until = now + seconds
        self.breaker.open_for(seconds)
        self.outcomes["pauses"] += 1
        # every worker learns from every episode, once
        rate = "" if self.quota is None else self.quota.episode(self._paused_until, seconds)
        log.warning("downstream %s: slowed down for %.1f s%s (%s)", self.name, seconds, rate,
                    source)
        return True

    async def _slowed_down(self, exc: SlowDown) -> None:
        seconds = parse_retry_after(exc.retry_after, default=self.default_retry_after,
                                    maximum=self.max_retry_after, now=self._wall())
        until = self._wall() + seconds
        if self.pause_until(until, source=exc.reason) and self.publish is not None:
            try:
                await self.publish(self.name, until)
            except Exception:  # the others then learn it from their own 429s
                log.exception("downstream %s: slow-down not published", self.name)

    # -- calls -----------------------------------------------------------------------------

    async def _admitted(self, stopped: asyncio.Event | None) -> int:
        """Wait until the breaker takes this call (a slow-down holds it open): the breaker's
        epoch then; raise :class:`WaitAborted` if ``stopped`` is set first."""
        while not self.breaker.allow():
            if stopped is None:
                await self.breaker.wait_until_allowed()
                continue
            if stopped.is_set() or isinstance(await self._stop_watch.until_set(
                    stopped, self.breaker.wait_until_allowed()), Stopped):
                raise WaitAborted(self.name)
            self.outcomes["waited"] += 1
        return self.breaker.epoch

    @contextlib.asynccontextmanager
    async def call(self, *, stopped: asyncio.Event | None = None) -> AsyncIterator[None]:
        """One attempt: waits for the breaker, a rate permit and a slot; records the outcome
        and re-raises what the body raised (a slow-down pauses every worker first).
        ``stopped``: give up waiting for the breaker when it is set (:class:`WaitAborted`)."""
        permit = await self._ready(stopped)
        start = self._clock()
        if self.quota is not None:
            self.quota.started()
        try:
            yield
        except SlowDown as exc:
            self._record("slow_down", start, failed=False, permit=permit, dropped=True)
            await self._slowed_down(exc)
            raise
        except BaseException as exc:
            down = isinstance(exc, Exception) and self.unavailable(exc)
            # only a timeout says the calls in flight were too many; a quick 503 or a refused
            # connection is the breaker's business, not a drop for the limit
            # (docs/downstream.md, "Calls in flight through an outage")
            self._record("unavailable" if down else "error", start, failed=True,
                         permit=permit,
                         dropped=down and isinstance(exc, (TimeoutError, asyncio.TimeoutError)))
            raise
        else:
            self._record("success", start, failed=False, permit=permit, dropped=False)

    async def _ready(self, stopped: asyncio.Event | None) -> CallPermit:
        """Admitted by the breaker, then a rate permit and a slot; if a slow-down began or the
        breaker moved on while it waited for those (see ``_may_go``), back to waiting: calls
        paced before must not go out during a pause or an outage, nor beside the half-open
        probes (docs/downstream.md, "A call's path")."""
        while True:
            epoch = await self._admitted(stopped)
            try:
                permit = await self._permits(stopped)
            except BaseException:
                self.breaker.abandon(epoch)  # a half-open probe that will never report
                raise
            if self._paused_until <= self._wall() and self._may_go(epoch):
                return permit
            permit.ignore()  # a pause began, or the breaker moved on, while it waited
            self.breaker.abandon(epoch)
            self.outcomes["held_by_pause"] += 1

    async def _permits(self, stopped: asyncio.Event | None) -> CallPermit:
        """A quota and a rate permit, then a slot. ``stopped`` set while they are awaited:
        :class:`WaitAborted`. Faust's rebalance waits for every event in progress, and a
        shared quota's lease can need the rebalance over: waited for, the rebalance timed out
        and the worker's producers were fenced (docs/downstream.md, "A rebalance").

        A plain agent's call (no ``stopped``) has no record to requeue: when Faust stops the
        flow it goes without the quota and rate permits (counted as ``overdrafts``), a
        slot only; a 429 for it pauses as any other."""
        flow = stopped if stopped is not None or self.flow_stopped is None else (
            self.flow_stopped())
        if flow is None:
            return await self._acquire_permits()
        permit = await self._stop_watch.until_set(flow, self._acquire_permits())
        if not isinstance(permit, Stopped):
            return permit
        if stopped is not None:
            self.outcomes["aborted_waits"] += 1
            raise WaitAborted(self.name)
        self.outcomes["overdrafts"] += 1
        log.info("downstream %s: the flow stopped, a call goes on without its permits "
                 "(an overdraft)", self.name)
        return await self.concurrency.acquire()

    async def _acquire_permits(self) -> CallPermit:
        if self.quota is not None:
            await self.quota.acquire()
        if self.rate is not None:
            await self.rate.acquire()
        return await self.concurrency.acquire()

    def _may_go(self, epoch: int) -> bool:
        """A call admitted under ``epoch`` that got its permit and slot: closed or the same
        epoch (in half-open, only the round's own probes; after a slow-down's pause too)."""
        return self.breaker.state in _PASSING or self.breaker.epoch == epoch

    def _record(self, outcome: str, start: float, *, failed: bool, permit: Any,
                dropped: bool) -> None:
        seconds = self._clock() - start
        self.outcomes[outcome] += 1
        self.breaker.record(seconds, failed)
        if dropped:
            permit.dropped()
        elif outcome == "success":
            self._ok_sent_at = max(self._ok_sent_at, self._wall() - seconds)
            permit.success()
            self._latency.observe(seconds)
            if self.quota is not None:
                self.quota.succeeded()
        else:
            permit.ignore()

    async def run(self, fn: Callable[..., Awaitable[T] | T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` through :meth:`call`, again after each slow-down and each
        unavailability (waiting as the pause and breaker say); other errors are raised."""
        return await self.run_unless(None, fn, *args, **kwargs)

    async def run_unless(self, stopped: asyncio.Event | None,
                         fn: Callable[..., Awaitable[T] | T], *args: Any, **kwargs: Any) -> T:
        """:meth:`run`, but waiting for the breaker ends with :class:`WaitAborted` once
        ``stopped`` is set (Faust's flow stopping for a rebalance: the pipeline requeues)."""
        while True:
            try:
                async with self.call(stopped=stopped):
                    result = fn(*args, **kwargs)
                    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                        result = await result
                    return result  # type: ignore[return-value]
            except SlowDown:
                continue
            except Exception as exc:  # broad: the user's ``unavailable`` predicate decides
                if not self.unavailable(exc):
                    raise
                self.outcomes["retried"] += 1

    # -- operators -------------------------------------------------------------------------

    def force(self, state: str) -> None:
        """An operator's ``open`` (calls wait), ``close`` (calls pass) or ``auto``."""
        actions = {"open": self.breaker.force_open, "close": self.breaker.force_close,
                   "auto": self.breaker.release}
        if state not in actions:
            raise ValueError(f"breaker state must be open, close or auto, got {state!r}")
        actions[state]()

    @property
    def state(self) -> BreakerState:
        return self.breaker.state

    def stats(self) -> DownstreamStats:
        limiter = self.concurrency.stats()
        breaker = self.breaker.stats()
        latency = self._latency.summary()
        return DownstreamStats(
            name=self.name, limit=limiter.limit, in_flight=limiter.in_flight,
            queued=limiter.queued, breaker=str(breaker.state.value),
            failure_rate=breaker.failure_rate, slow_call_rate=breaker.slow_call_rate,
            paused_for=self.paused_for, outcomes=dict(self.outcomes),
            latency_p50=latency.p50, latency_p99=latency.p99,
            latency_buckets=latency.buckets, latency_sum=latency.sum,
            learnt_rate=None if self.quota is None else self.quota.rate)

    @property
    def error_rate(self) -> float:
        """The breaker's failure rate over its window (what a control loop's restore reads)."""
        return float(self.breaker.stats().failure_rate)


def build_downstream(name: str, *, max_concurrency: int, min_concurrency: int = 1,
                     initial_concurrency: int | None = None,
                     limit: str | ConcurrencyLimit = "gradient",
                     rate: RateLimitingStrategy | None = None,
                     breaker: dict[str, Any] | None = None,
                     unavailable: Callable[[BaseException], bool] | None = None,
                     learn_quota: bool = True, max_rate: float = math.inf,
                     probe_after: float = PROBE_AFTER, quota: QuotaGate | None = None,
                     **options: Any) -> Downstream:
    """A :class:`Downstream` from plain settings (what ``bp.downstream(...)`` takes);
    ``quota``: a quota gate to use (default: this worker's own learnt rate)."""
    if isinstance(limit, str):
        initial = initial_concurrency if initial_concurrency is not None else min(
            max_concurrency, max(min_concurrency, 8))
        learnt = _LEARNT_LIMITS.get(limit)
        if learnt is not None:
            limit = learnt(initial, min_concurrency, max_concurrency)
        elif limit == "fixed":
            limit = FixedLimit(max_concurrency)
        else:
            raise ValueError(f"limit must be 'gradient', 'vegas', 'aimd', 'fixed' or a "
                             f"ConcurrencyLimit, got {limit!r}")
    return Downstream(name, limit=limit, breaker=CircuitBreaker(**(breaker or {})),
                      rate=rate, unavailable=unavailable or is_unavailable,
                      max_concurrency=max_concurrency,
                      quota=quota if quota is not None else
                      QuotaLearner(max_rate=max_rate, probe_after=probe_after)
                      if learn_quota else None,
                      **options)
