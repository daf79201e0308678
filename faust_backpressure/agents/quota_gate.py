"""Keeping to a quota a called system enforces but does not announce: one worker, or all.

A :class:`~faust_backpressure.limiters.quota.QuotaLearner` turns slow-downs into a rate; a
quota gate applies that rate to the calls of one guard (:mod:`.downstream`):

* :class:`LocalQuota`: each worker keeps to what *it* was served (a bucket of its own). When
  the workers' loads differ, the busy ones keep to their own share and the rest of the quota
  goes unused.
* :class:`SharedQuota`: the rate is the whole quota, kept by a shared (distributed) limiter
  whose owner splits it among the workers by their demand, as it does for any shared limiter.
  On a slow-down every worker reports what it was served just before it (a signed record on
  the ops topic); ``settle`` seconds later each adds up the reports of that episode, and the
  total is the ceiling the rate backs off from. Each worker then climbs the rate on its own
  successes and sends it to the owner; they all compute about the same value from the same
  episode.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

from faust_backpressure.agents.background import BackgroundTasks
from faust_backpressure.limiters import RateLimitingStrategy, TokenBucketRateLimiter
from faust_backpressure.limiters.base import Clock
from faust_backpressure.limiters.quota import QuotaLearner
from faust_backpressure.tables import DistributedRateLimiter

__all__ = ["LocalQuota", "QuotaGate", "QuotaReporter", "SharedQuota"]

log = logging.getLogger(__name__)

#: Sends this worker's report of an episode: ``(dependency, episode, served, whole)``.
QuotaReporter = Callable[[str, float, float, bool], Awaitable[None]]

#: Reports of one episode name the same pause end (wall clock) up to rounding.
_SAME_EPISODE = 0.5
#: A climbing step smaller than this fraction of the rate last sent is not sent.
_SMALLEST_STEP = 0.01


class QuotaGate(Protocol):
    """What a guard asks of its quota: permits, outcomes, slow-down episodes."""

    @property
    def rate(self) -> float | None:
        """The rate kept to (None: none learnt yet)."""

    async def acquire(self) -> None:
        """Wait for a permit at the learnt rate (at once while none is learnt)."""

    def started(self) -> None:
        """A call went out."""

    def succeeded(self) -> None:
        """A call succeeded."""

    def recovered(self) -> None:
        """The system is back after an outage: what is served is measured afresh, the
        restart's first two intervals as partial readings."""

    def episode(self, until: float, seconds: float) -> str:
        """A new slow-down episode: calls stop for ``seconds``, until ``until`` (wall clock);
        returns a few words for the log."""

    def report(self, worker: str, episode: float, served: float, whole: bool = True) -> None:
        """Another worker's report of what it was served before an episode (``whole``: over
        a whole interval)."""

    def announced(self, quota: float) -> None:
        """The system announced its quota (calls/s, every caller together)."""


class LocalQuota:
    """This worker's own learnt rate, a bucket with no burst and no initial tokens: else
    every worker's bucket is full when a pause ends, and their bursts together overrun the
    system's (docs/downstream.md)."""

    def __init__(self, learner: QuotaLearner, *, clock: Clock) -> None:
        self.learner = learner
        self._clock = clock
        self._bucket: TokenBucketRateLimiter | None = None

    @property
    def rate(self) -> float | None:
        return None if self._bucket is None else self.learner.rate

    async def acquire(self) -> None:
        if self._bucket is not None:
            await self._bucket.acquire()

    def started(self) -> None:
        self.learner.started()

    def succeeded(self) -> None:
        if (rate := self.learner.succeeded()) is not None:
            self._apply(rate)

    def recovered(self) -> None:
        self.learner.restarted()

    def episode(self, until: float, seconds: float) -> str:
        learnt = self.learner.slowed_down(seconds)
        if not math.isfinite(learnt):  # nothing called here yet, nothing to learn
            return ""
        self._apply(learnt)
        return f", then {learnt:.1f}/s"

    def report(self, worker: str, episode: float, served: float, whole: bool = True) -> None:
        """Reports are for shared quotas."""

    def announced(self, quota: float) -> None:
        """The quota is for every caller, and this worker's part of it is unknown: it only
        caps the rate here (a shared quota uses it whole)."""
        if self._bucket is not None and self.learner.rate > quota:
            self.learner.rate = quota
            self._apply(quota)

    def _apply(self, rate: float) -> None:
        if self._bucket is None:
            self._bucket = TokenBucketRateLimiter(rate, 1.0, initial_tokens=0,
                                                  clock=self._clock)
        else:
            self._bucket.update_rate_limit(rate)


class SharedQuota:
    """The quota learnt by every worker together, kept by the shared ``limiter``.

    ``given``: the limiter's rate is a known quota to start from (calls take its permits from
    the start); otherwise the limiter is not used until the first episode has set its rate.
    ``reporter`` publishes this worker's reports; ``settle``: how long after an episode began
    the reports are added up (they arrive within a few hundred ms on the ops topic);
    ``hold``: for how long after a new rate is in force (set, and the episode's pause over)
    further slow-downs only pause: answers to calls sent before it (unless that rate came from
    part of an interval: an upper bound, which the next one narrows).
    ``burst_of``: the shared burst for a rate, sent with each new rate (a distributed limiter
    of the quota's own; None: the limiter's burst is left as it is)."""

    def __init__(self, name: str, learner: QuotaLearner, limiter: RateLimitingStrategy, *,
                 worker: str, reporter: QuotaReporter | None, wall_clock: Clock,
                 given: bool = False, settle: float = 0.8, hold: float = 0.0,
                 burst_of: Callable[[float], float] | None = None) -> None:
        self.name = name
        self.learner = learner
        self.limiter = limiter
        self.worker = worker
        self.reporter = reporter
        self.settle, self.hold = settle, hold
        self._hold_until = 0.0
        self._wall = wall_clock
        self._learnt = self._warm = given
        if given:
            learner.rate = min(learner.max_rate, limiter.current_rate_limit)
        #: The latest report of each worker: ``worker -> (episode, served, whole)``.
        self.reports: dict[str, tuple[float, float, bool]] = {}
        self._background = BackgroundTasks(f"downstream {name}")
        self._sent = limiter.current_rate_limit
        #: sends a new rate (with its burst, to a distributed limiter of the quota's own)
        self._update_rate: Callable[[float], None] = limiter.update_rate_limit
        if burst_of is not None and isinstance(limiter, DistributedRateLimiter):
            own = limiter
            self._update_rate = lambda rate: own.update_rate_limit(rate, burst=burst_of(rate))
        #: a shared limiter's demand restarts when calls resume after a pause (wall clock)
        self._restart_demand = (limiter.restart_demand
                                if isinstance(limiter, DistributedRateLimiter) else None)
        self._resume_at: float | None = None

    @property
    def rate(self) -> float | None:
        return self.learner.rate if self._learnt else None

    async def acquire(self) -> None:
        if self._learnt:
            await self.limiter.acquire()

    def started(self) -> None:
        if not self._warm:
            # a first lease takes seconds (the owner's ledger, the request path): get it
            # now, not when an episode has paused every call and waits for it
            self._warm = True
            self.limiter.try_acquire(1)
        if self._resume_at is not None and self._wall() >= self._resume_at:
            self._resumed()
        self.learner.started()

    def _resumed(self) -> None:
        # read over the pause, demand was a fraction of it: each worker's next share was
        # cut to it (21.9/s of 43.8/s for 1 s after the halving's last step)
        self._resume_at = None
        if self._restart_demand is not None:
            self._restart_demand()

    def succeeded(self) -> None:
        # every worker climbs; a step under 1% is not sent (each update is a command the
        # owner persists and a new epoch for every worker's lease)
        rate = self.learner.succeeded()
        if rate is not None and abs(rate - self._sent) >= _SMALLEST_STEP * self._sent:
            self._send(rate)
        elif self._learnt and (owner := self.limiter.current_rate_limit) <= (
                1 - _SMALLEST_STEP) * self.learner.rate:
            # learners climb apart and the owner keeps the last rate sent: climb on from the
            # lower one in force, or it outlives an outage (through which each climbs to its
            # ceiling unsent) and a restart at the ceiling meets a 429 (docs/downstream.md)
            self._sent = self.learner.rate = owner

    def _send(self, rate: float) -> None:
        self._sent = rate
        self._update_rate(rate)

    def recovered(self) -> None:
        self.learner.restarted()
        self._resumed()  # the outage's probes were its only demand

    def episode(self, until: float, seconds: float) -> str:
        self._resume_at = until
        if self._wall() < self._hold_until and not self.learner.bounded:
            # calls made before the last rate was in force still answer 429: not news
            # (docs/downstream.md, "Learning the quota", step 4)
            self.learner.paused(seconds)
            return ", the rate just set is still spreading"
        served, whole = self.learner.observed(), self.learner.whole
        self.reports[self.worker] = (until, served, whole)
        if self.reporter is not None:
            # on failure the others count without this worker: a lower rate
            self._background.spawn(self.reporter(self.name, until, served, whole),
                                   "publishing the quota report")
        self._background.spawn(self._settle(until), "settling the episode")
        return f", {served:.1f}/s served here"

    def report(self, worker: str, episode: float, served: float, whole: bool = True) -> None:
        if worker != self.worker:
            self.reports[worker] = (episode, served, whole)

    def announced(self, quota: float) -> None:
        # every worker reads the same answers: each sends the same new rate, once per change
        rate = self.learner.announced(quota)
        if rate is not None:
            self._learnt = True
            self._send(rate)
            log.warning("downstream %s: the system announced %.1f/s; shared rate %.1f/s",
                        self.name, quota, rate)

    def _reports_of(self, episode: float) -> list[tuple[float, bool]]:
        """``(served, whole)`` of every worker that reported ``episode``."""
        return [(served, whole) for at, served, whole in self.reports.values()
                if abs(at - episode) < _SAME_EPISODE]

    def total(self, episode: float) -> float:
        """What every worker that reported ``episode`` was served before it."""
        return sum(served for served, _ in self._reports_of(episode))

    def whole(self, episode: float) -> bool:
        """Every worker that was served something read it over a whole interval: the total
        is a measurement, else an upper bound. The same on every worker (the same reports),
        so all hold, or all narrow, at the next episode."""
        return all(whole for served, whole in self._reports_of(episode) if served > 0)

    async def _settle(self, until: float) -> None:
        await asyncio.sleep(self.settle)
        total = self.total(until)
        workers = len(self._reports_of(until))
        rate = self.learner.slowed_down(max(0.0, until - self._wall()),
                                        ceiling=total if total > 0 else None,
                                        whole=self.whole(until))
        if not math.isfinite(rate):
            return
        self._learnt = True
        # every worker's share follows a lower rate at once (DistributedRateLimiter), so
        # only calls sent before the pause's end answer 429 for the old one
        self._hold_until = max(self._wall(), until) + self.hold
        at, served, _ = self.reports.get(self.worker, (None, 0.0, True))
        if at == until and served > 0:
            self._send(rate)
        # else this worker called nothing before the episode: it knows least, and the last
        # rate sent wins at the owner (docs/downstream.md, "Learning the quota", step 2)
        log.warning("downstream %s: %d worker(s) were served %.1f/s in all; shared rate "
                    "%.1f/s", self.name, workers, total, rate)

    async def stop(self) -> None:
        """The worker stops: cancel the reports being published and the episodes settling."""
        await self._background.stop()
