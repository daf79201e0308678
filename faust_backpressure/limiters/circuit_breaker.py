"""A circuit breaker with Resilience4j semantics on a time-based sliding window.

Example::

    breaker = CircuitBreaker(failure_rate_threshold=0.5, wait_in_open=2.5)
    await breaker.wait_until_allowed(timeout=30.0)    # no polling
    if breaker.allow():
        t0 = time.monotonic()
        try:
            await call()
        except Exception:
            breaker.record(time.monotonic() - t0, failed=True)
            raise
        breaker.record(time.monotonic() - t0, failed=False)
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from faust_backpressure.config.validation import check_int, check_number

from .base import Clock, RateLimitTimeout, _wake, check_timeout
from .breaker_window import Window as _Window

__all__ = ["BreakerState", "BreakerStats", "CircuitBreaker", "CircuitOpenTimeout",
           "TransitionCallback"]


class BreakerState(str, Enum):
    """A circuit breaker's state: its own three, or one an operator forced."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"  # operator override: nothing passes
    FORCED_CLOSED = "forced_closed"  # operator override: everything passes


#: Called as ``callback(old_state, new_state)`` on each transition.
TransitionCallback = Callable[[BreakerState, BreakerState], None]


class CircuitOpenTimeout(RateLimitTimeout):
    """``wait_until_allowed()`` timed out (an ``asyncio.TimeoutError``)."""


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A snapshot. Rates and ``calls`` are the window's, or the probes' in half-open.
    ``opened`` counts transitions into ``open``; ``last_transition`` is clock time."""

    state: BreakerState
    failure_rate: float
    slow_call_rate: float
    calls: int
    opened: int
    last_transition: float


#: Float rounding slack (s) when telling a call's start from a transition time.
_SLACK = 1e-6


def _check_rate(name: str, value: object) -> float:
    rate = check_number(name, value, 0, strict=True)
    if rate > 1.0:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return rate


class CircuitBreaker:
    """Stops calls to a failing or slow system, then lets a few probes test it.

    * ``closed``: every call passes. Outcomes go to a sliding window of ``window``
      seconds (``buckets`` buckets). With at least ``minimum_calls`` in it, a failure
      rate ``>= failure_rate_threshold`` or a slow-call rate (calls slower than
      ``slow_call_duration``) ``>= slow_call_rate_threshold`` opens the breaker.
      ``slow_call_rate_threshold=1.0`` (the default) turns the slow-call check off.
    * ``open``: nothing passes for ``wait_in_open`` seconds, then ``half_open``.
      Results of calls that started before are not counted. The defaults (2.5 s, 2
      probes) keep an outage's calls under 1/s per caller and find the system back
      within 2.5 s (Resilience4j's 60 s and 10 probes suit request paths, not a stream
      that waits for the system with its whole backlog).
    * ``half_open``: ``half_open_calls`` probes pass in total (with
      ``sequential_probes``, one at a time: the next once the last reported, so a round
      that fails costs one call). When all reported, closed (empty window) if their
      failure and slow-call rates are under the thresholds; open again as soon as enough
      of them failed (or were slow) that the rest cannot bring the rates under. Only
      results of calls that started in half-open count as probes; :meth:`abandon` gives
      back a probe that will never report.
    * ``forced_open`` / ``forced_closed``: operator overrides that ignore outcomes
      until :meth:`release` (closed, empty window).

    ``probe_rate``: calls/s let through while not closed, over time (a bucket of 2 rounds of
    probes, emptied when failures first open it): an outage costs at most ``probe_rate`` x t
    calls in the t s after that, whatever makes it probe (rounds whose first probe passes,
    recovery news, short slow-downs); inf (the default): no bound but the rounds'.

    ``open_jitter``: each opening on the breaker's own verdict lasts ``wait_in_open`` x a
    random factor in ``[1 - open_jitter, 1 + open_jitter]`` (its mean unchanged), so that
    callers whose breakers opened together (every worker, at the start of an outage) do
    not probe together for its whole length. ``rng``: the source of that factor.
    Transitions out of ``open`` happen lazily: when the breaker is asked, or a timer fires.
    """

    __slots__ = ("_budget", "_budget_at", "_callbacks", "_clock", "_epoch", "_failing",
                 "_open_until", "_opened", "_probe_fail", "_probe_slow", "_probes_done",
                 "_probes_out", "_rng", "_since", "_state", "_waiters", "_window",
                 "failure_rate_threshold", "half_open_calls", "minimum_calls", "open_jitter",
                 "probe_rate", "sequential_probes", "slow_call_duration",
                 "slow_call_rate_threshold", "wait_in_open")

    def __init__(
        self,
        *,
        failure_rate_threshold: float = 0.5,
        slow_call_rate_threshold: float = 1.0,
        slow_call_duration: float = 5.0,
        window: float = 10.0,
        buckets: int = 10,
        minimum_calls: int = 10,
        wait_in_open: float = 2.5,
        half_open_calls: int = 2,
        sequential_probes: bool = False,
        open_jitter: float = 0.0,
        probe_rate: float = math.inf,
        clock: Clock = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.failure_rate_threshold = _check_rate("failure_rate_threshold",
                                                  failure_rate_threshold)
        self.slow_call_rate_threshold = _check_rate("slow_call_rate_threshold",
                                                    slow_call_rate_threshold)
        self.slow_call_duration = check_number("slow_call_duration", slow_call_duration, 0)
        self.minimum_calls = check_int("minimum_calls", minimum_calls, 1)
        self.wait_in_open = check_number("wait_in_open", wait_in_open, 0)
        self.half_open_calls = check_int("half_open_calls", half_open_calls, 1)
        self.sequential_probes = bool(sequential_probes)
        self.open_jitter = check_number("open_jitter", open_jitter, 0)
        if self.open_jitter >= 1.0:
            raise ValueError(f"open_jitter must be a number in [0, 1), got {open_jitter!r}")
        self.probe_rate = (math.inf if probe_rate == math.inf
                           else check_number("probe_rate", probe_rate, 0, strict=True))
        self._rng = rng
        self._window = _Window(check_number("window", window, 0, strict=True),
                               check_int("buckets", buckets, 1))
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._since = clock()
        self._open_until = -math.inf
        self._opened = 0
        self._epoch, self._failing = 0, False  # transitions; failures opened it (outage)
        self._budget, self._budget_at = 2.0 * self.half_open_calls, self._since
        self._probes_out = self._probes_done = self._probe_fail = self._probe_slow = 0
        self._callbacks: list[TransitionCallback] = []
        self._waiters: dict[asyncio.Future[None], None] = {}  # ordered: FIFO wake-ups

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        self._tick(self._clock())
        return self._state

    @property
    def epoch(self) -> int:
        """Changes at every transition (a call :meth:`allow` let through is for its epoch)."""
        self._tick(self._clock())
        return self._epoch

    def on_transition(self, callback: TransitionCallback) -> None:
        """Call ``callback(old, new)`` on each state change."""
        self._callbacks.append(callback)

    def _tick(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._to(BreakerState.HALF_OPEN, now)

    def _to(self, state: BreakerState, now: float, open_for: float = 0.0) -> None:
        old, self._state = self._state, state
        self._epoch += 1
        if old is not state:
            self._since = now
        self._probes_out = self._probes_done = self._probe_fail = self._probe_slow = 0
        if state is BreakerState.OPEN:
            self._opened += 1
            self._open_until = now + open_for
        elif state is BreakerState.CLOSED:
            self._window.clear()
            self._failing = False
        self._wake_waiters()
        if old is not state:
            for callback in tuple(self._callbacks):
                callback(old, state)

    def _wake_waiters(self) -> None:
        """Let every :meth:`wait_until_allowed` caller recompute (in FIFO order)."""
        for fut in self._waiters:
            _wake(fut)

    def _wait(self) -> float:  # how long an opening on its own verdict lasts (jittered)
        if not self.open_jitter:
            return self.wait_in_open
        return self.wait_in_open * (1.0 + self.open_jitter * (2.0 * self._rng() - 1.0))

    def _decided(self) -> bool | None:
        """The probes' verdict so far: True (they trip it, whatever the rest say), False
        (all reported, under the thresholds), None (not yet known)."""
        # over every probe, reported or not: what the rest report cannot bring it under
        if self._trips(self.half_open_calls, self._probe_fail, self._probe_slow):
            return True
        if self._probes_done >= self.half_open_calls:
            return self._trips(self._probes_done, self._probe_fail, self._probe_slow)
        return None

    def _trips(self, calls: int, failures: int, slow: int) -> bool:
        if failures >= self.failure_rate_threshold * calls:
            return True
        return self.slow_call_rate_threshold < 1.0 and (
            slow >= self.slow_call_rate_threshold * calls)

    # -- calls -----------------------------------------------------------------------------

    def allow(self) -> bool:
        """May a call go now? In half-open, True takes one of the probes."""
        state = self._state
        if state is BreakerState.CLOSED or state is BreakerState.FORCED_CLOSED:
            return True
        self._tick(self._clock())
        if self._state is BreakerState.HALF_OPEN and self._probe_free():
            if self.probe_rate != math.inf:
                now = self._clock()
                tokens = self._tokens(now)
                if tokens < 1.0 - _SLACK:
                    return False
                self._budget, self._budget_at = max(0.0, tokens - 1.0), now
            self._probes_out += 1
            return True
        return False

    def _tokens(self, now: float) -> float:  # the probe budget now
        return min(2.0 * self.half_open_calls,
                   self._budget + max(0.0, now - self._budget_at) * self.probe_rate)

    def _probe_free(self) -> bool:
        if self._probes_out >= self.half_open_calls:
            return False
        return not self.sequential_probes or self._probes_out == self._probes_done

    def record(self, duration: float, failed: bool) -> None:
        """Report a finished call: ``duration`` seconds, failed or not."""
        duration = check_number("duration", duration, 0)
        now = self._clock()
        self._tick(now)
        slow = duration > self.slow_call_duration
        state = self._state
        if state is BreakerState.CLOSED:
            w = self._window
            w.add(now, failed, slow)
            if w.calls >= self.minimum_calls and self._trips(w.calls, w.failures, w.slow):
                self._trip(now)
        elif state is BreakerState.HALF_OPEN:
            started = now - duration + _SLACK
            if started < self._since or self._probes_done >= self._probes_out:
                return  # not a probe: it started before half-open
            self._probes_done += 1
            self._probe_fail += failed
            self._probe_slow += slow
            verdict = self._decided()
            if verdict is True:
                self._trip(now)
            elif verdict is False:
                self._to(BreakerState.CLOSED, now)
            elif self.sequential_probes:
                self._wake_waiters()  # the next probe may go

    def _trip(self, now: float) -> None:
        if not self._failing:  # an outage's first opening: its failures spent the budget
            self._budget, self._budget_at, self._failing = 0.0, now, True
        self._to(BreakerState.OPEN, now, self._wait())

    def abandon(self, epoch: int | None = None) -> None:
        """A call let through by :meth:`allow` (under ``epoch``, if given: else the current
        one) will not report and was not made: in half-open, free its probe and budget."""
        if epoch is not None and epoch != self.epoch:
            return  # its round is over: the probe counts were reset since
        if self._state is BreakerState.HALF_OPEN and self._probes_out > self._probes_done:
            self._probes_out -= 1
            if self.probe_rate != math.inf:
                now = self._clock()
                self._budget, self._budget_at = self._tokens(now) + 1.0, now
            self._wake_waiters()

    def time_until_allowed(self) -> float:
        """0.0 if a call may go now; seconds left in open; ``math.inf`` when only a
        probe result (half-open, all probes out) or :meth:`release` can change it."""
        now = self._clock()
        self._tick(now)
        state = self._state
        if state is BreakerState.OPEN:
            return max(0.0, self._open_until - now)
        if state is BreakerState.HALF_OPEN:
            if not self._probe_free():
                return math.inf
            short = 0.0 if self.probe_rate == math.inf else 1.0 - _SLACK - self._tokens(now)
            return max(0.0, short / self.probe_rate)
        return math.inf if state is BreakerState.FORCED_OPEN else 0.0

    async def wait_until_allowed(self, timeout: float | None = None) -> None:
        """Return once :meth:`time_until_allowed` is 0 (then call :meth:`allow`, which may
        still lose a probe to another caller). Woken by a timer at the open deadline and
        by transitions; raises :class:`CircuitOpenTimeout` after ``timeout`` seconds."""
        if timeout is not None:
            timeout = check_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while (delay := self.time_until_allowed()) > 0:
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise CircuitOpenTimeout(f"circuit not allowing calls within {timeout} s")
                delay = min(delay, remaining)
            fut: asyncio.Future[None] = loop.create_future()
            handle = None if delay == math.inf else loop.call_later(delay, _wake, fut)
            self._waiters[fut] = None
            try:
                await fut
            finally:
                self._waiters.pop(fut, None)
                if handle is not None:
                    handle.cancel()

    # -- operator --------------------------------------------------------------------------

    def open_for(self, seconds: float) -> None:
        """Open now for ``seconds`` (a "slow down" from outside), then half-open probes.

        Extends but never shortens a current open; ignored under a forced state."""
        seconds = check_number("seconds", seconds, 0)
        now = self._clock()
        self._tick(now)
        state = self._state
        if state is BreakerState.FORCED_OPEN or state is BreakerState.FORCED_CLOSED:
            return
        if state is BreakerState.OPEN:
            if now + seconds > self._open_until:
                self._open_until = now + seconds
            return
        self._to(BreakerState.OPEN, now, seconds)

    def probe_soon(self, min_open: float = 0.0) -> bool:
        """The system was seen working elsewhere (another caller's probes passed): an open
        breaker goes half-open now, or ``min_open`` seconds after it opened if that is later
        (bounding the probes a stream of such news can cause); never later than it would
        have. False in any other state (forced states ignore it)."""
        min_open = check_number("min_open", min_open, 0)
        now = self._clock()
        self._tick(now)
        if self._state is not BreakerState.OPEN:
            return False
        until = max(now, self._since + min_open)
        if until < self._open_until:
            self._open_until = until
            self._tick(now)
            self._wake_waiters()  # their timers were set for the old deadline
        return True

    @property
    def failing(self) -> bool:
        """Failures opened it (its own, or another caller's: :meth:`trip`) and it has not
        closed since: while not closed only its probes go, from the probe budget."""
        return self._failing

    def trip(self) -> bool:
        """Failures were seen elsewhere (another caller's breaker opened on them). Closed or
        half-open: open now as on its own verdict (its own jittered wait, the probe budget
        emptied). Open for a slow-down: open until then, but failing (its half-open starts
        from an empty budget). False if already failing, and under a forced state."""
        now = self._clock()
        self._tick(now)
        state = self._state
        if (self._failing or state is BreakerState.FORCED_OPEN
                or state is BreakerState.FORCED_CLOSED):
            return False
        if state is BreakerState.OPEN:
            self._budget, self._budget_at, self._failing = 0.0, now, True
        else:
            self._trip(now)
        return True

    def force_open(self) -> None:
        """Refuse every call until :meth:`release`; outcomes are ignored."""
        self._to(BreakerState.FORCED_OPEN, self._clock())

    def force_close(self) -> None:
        """Allow every call until :meth:`release`; outcomes are ignored."""
        self._to(BreakerState.FORCED_CLOSED, self._clock())

    def release(self) -> None:
        """Back to automatic: closed with an empty window."""
        self._to(BreakerState.CLOSED, self._clock())

    def stats(self) -> BreakerStats:
        now = self._clock()
        self._tick(now)
        if self._state is BreakerState.HALF_OPEN:
            calls, failures, slow = self._probes_done, self._probe_fail, self._probe_slow
        else:
            w = self._window
            w.advance(now)
            calls, failures, slow = w.calls, w.failures, w.slow
        return BreakerStats(
            state=self._state,
            failure_rate=failures / calls if calls else 0.0,
            slow_call_rate=slow / calls if calls else 0.0,
            calls=calls,
            opened=self._opened,
            last_transition=self._since,
        )

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._state.value}>"
