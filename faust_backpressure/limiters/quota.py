"""Learning a quota that a called system enforces but does not announce, from its "slow down"s.

A system with a quota answers 429 once callers exceed it; it rarely says the quota. This is
AIMD on a *rate*, remembering where the last loss happened (as TCP CUBIC does):

* no slow-down yet: no limit (``rate`` is ``math.inf``);
* a slow-down: the ceiling becomes what was served just before (successes per second in the
  best of the last three whole intervals: one starved second is not the quota; or the rate
  itself when nothing was seen), and the rate backs off to ``backoff`` x the ceiling
  (``fast_backoff`` if the previous slow-down was under ``recent`` seconds ago: the quota
  fell, find it in a few steps);
* a reading from part of an interval (or of calls attempted, nothing served yet) overstates
  what is served: the ceiling is then only an upper bound (``bounded``). A later whole
  reading below the rate replaces it and backs off ``backoff`` x that reading, however recent
  (a better measurement, not a second loss); the first at or above the rate backs off
  ``backoff`` x the rate (a first loss at it), later ones as usual;
* after a pause or an outage (:meth:`paused`, :meth:`restarted`) the first two intervals
  read the restart's ramp, not the quota: a slow-down whose reading is below the rate and
  not whole (the ramp or part of an interval, on any worker) backs off from the rate (at
  least to 0.7 x, when it is under ``recent`` seconds after the last);
* every ``interval`` without one, the rate climbs back a quarter of the way to the ceiling,
  and after ``probe_after`` seconds near it probes above it, a little more each interval,
  so that a raised quota is found; a caller served nothing in an interval (idle) takes that
  step when it next calls or meets an episode, without the probe (a probe needs calls), so
  that every caller settles an episode from about the same rate;
* a system that does announce its quota (``RateLimit-Policy``, ``X-RateLimit-Limit``): a new
  announced value becomes the ceiling and the rate at once, up or down, and no probe goes
  above it.

The runs behind each rule: ``docs/downstream.md``, "Learning the quota".

Pure: the caller reports outcomes and applies ``rate`` to its limiter. Example::

    learner = QuotaLearner(max_rate=5000)
    learner.slowed_down()          # on a 429
    learner.succeeded()            # per successful call; returns the new rate when it moved
"""

from __future__ import annotations

import math
import time

from faust_backpressure.config.validation import check_number

from .base import Clock

__all__ = ["PROBE_AFTER", "QuotaLearner"]

#: Seconds near the ceiling before probing above it (the default; docs/downstream.md).
PROBE_AFTER = 30.0

#: Whole intervals a reading is the best of.
_KEPT = 3
#: Intervals after a pause or an outage read as its ramp, not the quota.
_RAMP = 2
#: Most climbing steps an idle caller catches up at once (0.75**32: at the ceiling).
_MOST_STEPS = 32
#: At most this x the rate on a loss at the rate soon after another (a pause loop).
_AGAIN = 0.7


class QuotaLearner:
    """The rate one caller should keep to, learnt from successes and slow-downs."""

    __slots__ = ("_attempted", "_attempts", "_clock", "_from_reading", "_last_call",
                 "_next_step", "_ok", "_probes", "_ramp", "_readings", "_served", "_served_ramp",
                 "_since", "_slowed_at", "announced_quota", "backoff", "bounded", "ceiling",
                 "fast_backoff", "interval", "max_rate", "min_rate", "near_since",
                 "probe_after", "rate", "recent")

    def __init__(self, *, max_rate: float = math.inf, min_rate: float = 1.0,
                 backoff: float = 0.9, fast_backoff: float = 0.7, recent: float = 5.0,
                 interval: float = 1.0, probe_after: float = PROBE_AFTER,
                 initial_rate: float = math.inf, clock: Clock = time.monotonic) -> None:
        """``initial_rate``: the rate before any slow-down (a limit the caller was given;
        default none), at most ``max_rate``."""
        self.max_rate = (math.inf if max_rate == math.inf
                         else check_number("max_rate", max_rate, 0, strict=True))
        self.min_rate = check_number("min_rate", min_rate, 0, strict=True)
        self.backoff = _fraction("backoff", backoff)
        self.fast_backoff = _fraction("fast_backoff", fast_backoff)
        self.recent = check_number("recent", recent, 0)
        self.interval = check_number("interval", interval, 0, strict=True)
        self.probe_after = check_number("probe_after", probe_after, 0)
        self._clock = clock
        self.rate = min(self.max_rate, math.inf if initial_rate == math.inf else
                        check_number("initial_rate", initial_rate, 0, strict=True))
        #: What was served when the last slow-down came (None: none yet).
        self.ceiling: float | None = None
        #: The ceiling is an upper bound (read over part of an interval), not a measurement.
        self.bounded = False
        self._from_reading = True  # the rate was set from a reading (not a loss at the rate)
        #: intervals of the restart's ramp left, counting the one in progress
        self._ramp = 0
        self._served_ramp = False  # the last whole interval was one of them
        now = clock()
        self._restart(now)
        self._last_call = -math.inf
        #: successes and calls per second in the last whole interval
        self._served = self._attempted = 0.0
        #: successes per second in the last few whole intervals after the ramp, if any
        self._readings: list[float] = []
        self._slowed_at = -math.inf
        self.near_since: float | None = None
        self._probes = 0
        #: The quota the system last announced (None: it announces none).
        self.announced_quota: float | None = None

    def started(self) -> None:
        """A call went out (what was attempted bounds the quota when little was served)."""
        now = self._clock()
        if now - self._last_call > self.interval and now >= self._since:
            # calls resume after a quiet spell: measure from here, or it dilutes the reading
            self._catch_up(now)
            self._served = self._attempted = 0.0
            self._readings = []
            self._restart(now)
        self._last_call = now
        if now >= self._since:
            self._attempts += 1

    def observed(self) -> float:
        """What this caller was served just now (successes per second in the best of the
        last ``_KEPT`` whole intervals, or in this one if there was none and it went on long
        enough); when nothing was, what it attempted (a burst refused at once: an upper
        bound); 0 if it made no calls."""
        elapsed = self._clock() - self._since
        # whole intervals when there are (part of one overstates: the system's own burst);
        # the best of a few, as BBR keeps the most delivered: one starved second is not the quota
        served = (max(self._readings, default=0.0) or self._served
                  or (self._ok / elapsed if elapsed >= self.interval / 2 else 0.0))
        attempted = self._attempted or (self._attempts / elapsed if elapsed > 0 else 0.0)
        return served if served > 0 else attempted

    @property
    def whole(self) -> bool:
        """:meth:`observed` reads a whole interval (else part of one: an upper bound)."""
        return self._served > 0 and not self._served_ramp

    def slowed_down(self, pause: float = 0.0, *, ceiling: float | None = None,
                    whole: bool | None = None) -> float:
        """A slow-down (one per pause: the caller coalesces) that stops calls for ``pause``
        seconds; returns the new rate (``math.inf`` while nothing was attempted here).
        ``ceiling``: what the system served, when the caller knows better than
        :meth:`observed` (e.g. the sum over every worker sharing the quota); ``whole``: it
        was read over a whole interval (default :attr:`whole`)."""
        now = self._clock()
        self._catch_up(now)  # an idle caller: from the rate the busy ones climbed to
        recent = now - self._slowed_at < self.recent
        whole = self.whole if whole is None else whole
        factor = self.fast_backoff if recent else self.backoff
        reading = self.observed() if ceiling is None else ceiling
        self._ramp, self._served_ramp = 0, False
        if recent and not whole:
            # soon after a loss, again before a whole interval: the rate is well above the
            # quota (a pause's burst gone at once). Decided from what every worker sees
            # alike (not its own rate): the last rate sent wins at the owner
            factor = min(factor, _AGAIN)
        if self.announced_quota is not None and not recent:
            # Under an announced quota a lone slow-down is a burst, not a lower quota (that
            # would be announced). A second one soon after (callers we do not see share the
            # quota) reads what was served.
            ceiling, whole = self.announced_quota, True
        elif not whole and reading < 0.99 * self.rate < math.inf:
            # part of an interval, or the restart's ramp (on any worker: all decide alike):
            # calls and leases not yet at the rate, not the quota. A loss at the rate, the
            # bound (if any) kept.
            ceiling, whole, reading = self.rate, not self.bounded, self.rate
        elif self.bounded and reading < 0.99 * self.rate:
            # the ceiling was an upper bound and this reading is below the rate: a better
            # measurement, not a second loss (fast_backoff would undershoot)
            ceiling, factor = reading, self.backoff
        else:
            ceiling = min(reading, self.rate)
            if self.bounded and self._from_reading:
                # the rate came from a bound, not a loss: this is the first loss at it
                factor = self.backoff
        self._from_reading = reading < self.rate  # else a loss at the rate: the next, fast
        self._slowed_at = now
        self.paused(pause)  # what is served counts once the pause is over
        self.near_since, self._probes = None, 0
        if ceiling > 0 and math.isfinite(ceiling):
            self.ceiling, self.bounded = ceiling, not whole
            self.rate = max(self.min_rate, ceiling * factor)
        return self.rate

    def announced(self, quota: float) -> float | None:
        """The system announced its quota (calls/s). A new value (1% or more from the last)
        becomes the ceiling and the rate, up or down; the same value again changes nothing
        (after a slow-down the rate climbs back as usual, up to it). Returns the new rate
        when it changed."""
        quota = check_number("quota", quota, 0, strict=True)
        last = self.announced_quota
        if last is not None and abs(quota - last) < 0.01 * last:
            return None
        self.announced_quota = self.ceiling = quota
        self.bounded = False
        self.near_since, self._probes = None, 0
        old = self.rate
        self.rate = max(self.min_rate, min(self.max_rate, quota))
        return self.rate if self.rate != old else None

    def paused(self, pause: float) -> None:
        """Calls stop for ``pause`` seconds, the rate unchanged: measure afresh after it (an
        interval with a pause in it understates what is served), the first two intervals
        after it as the restart's ramp, like after an outage."""
        now = self._clock()
        self._catch_up(now)
        self._served = self._attempted = 0.0
        self._readings = []
        self._restart(now + pause)
        # the ramp: a shared limiter's leases start empty after a pause, and a new split
        # reaches the workers a lease period or two later
        self._ramp, self._served_ramp = _RAMP, False

    def restarted(self) -> None:
        """Calls resume after an outage: measure afresh, and take the first two intervals
        (the restart's ramp) as partial readings (:attr:`whole` False); a slow-down whose
        reading from them is below the rate backs off from the rate, not from that reading."""
        self.paused(0.0)

    def _restart(self, now: float) -> None:
        self._since, self._ok, self._attempts = now, 0, 0
        self._next_step = now + self.interval

    def succeeded(self) -> float | None:
        """One successful call; the new rate when it changed (at most once an interval)."""
        now = self._clock()
        if now < self._since:  # sent before a pause, answered during it: not what the
            return None         # next interval serves
        self._ok += 1
        if now < self._next_step:
            return None
        self._served = self._ok / (now - self._since)
        self._attempted = self._attempts / (now - self._since)
        self._served_ramp, self._ramp = self._ramp > 0, max(0, self._ramp - 1)
        if not self._served_ramp:
            self._readings = [*self._readings[1 - _KEPT:], self._served]
        self._restart(now)
        if self.ceiling is None:
            return None
        old = self.rate
        self._climb(now, probe=True)
        return self.rate if self.rate != old else None

    def _climb(self, now: float, *, probe: bool) -> None:
        """One interval's step: a quarter of the way to the ceiling, or near it for
        ``probe_after`` seconds, above it (``probe``: this caller is served, a probe tests)."""
        ceiling = self.ceiling
        assert ceiling is not None
        if self.rate < 0.99 * ceiling:
            self.rate += (ceiling - self.rate) / 4
            self.near_since = None
        else:
            if self.near_since is None:
                self.near_since = now
            if probe and now - self.near_since >= self.probe_after:
                self._probes += 1  # above the ceiling, more each interval
                self.rate = max(self.rate, ceiling) * (1 + 0.01 * self._probes)
        # an announced quota is the most there is: no probe above it
        self.rate = min(self.rate, self.max_rate, self.announced_quota or math.inf)

    def _catch_up(self, now: float) -> None:
        """The steps of the intervals up to ``now`` this caller took none in (served nothing:
        idle, or in an outage or a pause), as a caller served in each took them; else an idle
        worker would back off its own stale rate at every episode, lower each time."""
        if now < self._next_step:
            return
        due = int((now - self._next_step) // self.interval) + 1
        if self.ceiling is not None:
            for step in range(min(due, _MOST_STEPS)):
                self._climb(self._next_step + step * self.interval, probe=False)
        self._next_step += due * self.interval


def _fraction(name: str, value: float) -> float:
    value = check_number(name, value, 0, strict=True)
    if value >= 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return value
