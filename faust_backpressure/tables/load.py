"""How busy the owner is: the queue delay of lease requests, and the stretch it asks for.

Pure (times passed in). The owner agent calls :meth:`OwnerLoad.observe` with how long each
request waited in the request topic before the owner read it (``now`` minus the record's
timestamp). Each ``interval`` the mean of those waits updates the two figures below, except
in the first interval after the owner read nothing for a while: its requests may have waited
for a broker outage, not for the owner, so (as CoDel tells a burst from a standing queue) it
counts its *smallest* wait, or that of the first request after it if smaller, which shows the
queue as it is now, and a backlog that drained is not load.

* ``delay``: a smoothed queue delay; a lease granted now lives longer by a few times it, so an
  answer that waited in the queue still gives a usable lease;
* ``stretch`` (1 .. ``MAX_STRETCH``): above the ``target`` delay it grows multiplicatively (up
  to 1.5x per interval), below half the target it decays by 5% per interval. The owner stretches
  renewal periods and ``retry_after`` by it: workers ask less often, for more tokens each time,
  until the queue is back at the target. Admission does not suffer from it as long as a period
  stays within the limits ``LimiterLedger.handle_lease`` puts on it.

* ``pause`` (s, 0 at rest): past what the stretch absorbs (the queue delay still above the
  target with the stretch at its maximum) the owner is asked more often than it can answer:
  each pair (worker, id) would always have a request queued, the queue delay would be pairs /
  answers per second, and past the longest lease every answer would come too late (the
  collapse: admission 0). Each answer then tells its worker to ask next ``pause`` after it
  (``LimiterLedger.handle_lease``): the pairs that asked lately (:meth:`served`) over 80% of
  the answers per second measured while requests queued (``capacity``), or, until those are
  known, ``held`` (the excess delay integrated about once per pair's cycle) plus the delay. A
  pair's lease may lapse for a while, but the queue stays short and every answer gives a whole
  lease. Below half the target ``held`` decays by 1% per interval; the count follows the
  pairs that still ask.

Intervals without a request count as intervals without a queue, so both relax with time, not
with the number of requests (an owner asked once every few seconds relaxes as fast as a busy
one).

The record timestamp is the sender's wall clock: a worker whose clock runs ahead of the owner's
looks like a queue (the owner stretches: fewer, larger leases, still within the bound), one
that runs behind hides a queue (the owner reacts only once the real delay exceeds the skew).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

from faust_backpressure.tables.ledger import MAX_PAUSE, MAX_STRETCH

__all__ = ["OwnerLoad"]

_MAX_SAMPLE = 60.0
#: Quiet intervals applied at most (enough to relax from any state to rest).
_MAX_QUIET = 100


@dataclass(slots=True)
class OwnerLoad:
    target: float = 0.05
    interval: float = 0.2
    delay: float = 0.0
    stretch: float = 1.0
    pause: float = 0.0
    held: float = 0.0
    #: Answers a second while requests queued (what this owner can do; 0: not measured yet).
    capacity: float = 0.0
    _since: float = field(default=-math.inf, repr=False)
    _least: float = field(default=math.inf, repr=False)
    _sum: float = field(default=0.0, repr=False)
    _n: int = field(default=0, repr=False)
    _after_gap: bool = field(default=False, repr=False)
    _pairs: dict[Hashable, float] = field(default_factory=dict, repr=False)  # last asked
    _answers: int = field(default=0, repr=False)
    _pruned: float = field(default=-math.inf, repr=False)
    _longest: float = field(default=0.0, repr=False)  # pause handed out lately, decaying

    def observe(self, queued: float, now: float) -> None:
        """One request that waited ``queued`` seconds before the owner read it."""
        sample = min(max(0.0, queued), _MAX_SAMPLE)
        elapsed = now - self._since
        if elapsed >= self.interval and self._n:
            mean = self._sum / self._n
            if mean > self.target and self._answers:  # it was busy: its answers/s is its pace
                # (the best lately: an interval spent skipping doomed requests answers less)
                self.capacity = max(self._answers / elapsed, 0.998 * self.capacity)
            self._answers = 0
            self._update(min(self._least, sample) if self._after_gap else mean)
            quiet = int(elapsed / self.interval) - 1
            for _ in range(min(_MAX_QUIET, quiet)):
                self._update(0.0)
            if self.held > 0.0:
                self.pause = max(self.pause, self._need(now))
            self._longest = max(self.pause, 0.998 * self._longest)
            self._after_gap = quiet > 0
            self._least, self._sum, self._n = math.inf, 0.0, 0
        if not self._n:
            self._since = now
        self._least = min(self._least, sample)
        self._sum += sample
        self._n += 1

    def served(self, pair: Hashable, now: float, *, answered: bool) -> None:
        """After :meth:`observe`: who asked (worker and limiter id) and if it was answered."""
        self._pairs[pair] = now
        self._answers += answered

    def _need(self, now: float) -> float:
        """The pause at which the pairs that asked lately ask 80% of what this owner answers."""
        if now - self._pruned > 1.0:
            window = 30.0 + 2.0 * self._longest  # a pair paused lately has come back since
            self._pairs = {pair: t for pair, t in self._pairs.items() if now - t <= window}
            self._pruned = now
        return len(self._pairs) / (0.8 * self.capacity) if self.capacity else 0.0

    def _update(self, mean: float) -> None:
        self.delay = 0.5 * self.delay + 0.5 * mean
        if mean > self.target:
            if self.stretch >= MAX_STRETCH:
                # Requests paused now show in the delay a cycle later: an integrator that
                # adds about the excess delay once per cycle, not once per interval.
                excess = mean - self.target
                self.held = min(MAX_PAUSE, self.held + excess * self.interval
                                / (self.held + mean + self.interval))
            self.stretch = min(MAX_STRETCH,
                               self.stretch * (1.0 + 0.5 * min(1.0, mean / self.target - 1.0)))
        elif mean < 0.5 * self.target:
            self.stretch = max(1.0, self.stretch * 0.95)
            self.held = self.held * 0.99 if self.held > 0.05 else 0.0
        # ... plus the delay itself (the queue that is there now) while it lasts.
        self.pause = self.held + (self.delay if self.held > 0.0 else 0.0)
