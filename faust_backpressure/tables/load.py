"""How busy the owner is: the queue delay of lease requests, and what it asks of the workers.

Pure (times passed in). The owner agent calls :meth:`OwnerLoad.observe` with how long each
request waited in the request topic (``now`` minus the record's timestamp) and
:meth:`OwnerLoad.served` with who asked. Each ``interval`` the mean wait updates:

* ``delay``: a smoothed queue delay; a lease granted now lives longer by a few times it, so an
  answer that waited in the queue still gives a usable lease;
* ``stretch`` (1 .. ``MAX_STRETCH``): grows above the ``target`` delay (up to 1.5x per
  interval), decays below half of it; the owner stretches leases and ``retry_after`` by it, so
  workers ask less often, for more each time;
* ``pause`` (s, 0 at rest): past what the stretch absorbs, how long each (worker, id) pair waits
  after an answer before it asks again (``LimiterLedger.handle_lease``), so that the queue stays
  short and answers come in time, instead of every answer coming too late (the collapse). It is
  the recent pairs over 80% of ``capacity``, or until that is measured ``held`` (the excess
  delay integrated about once per pair's cycle) plus the delay.

The first interval after a quiet spell counts its *smallest* wait, not the mean: a backlog
left by a broker outage is not load (CoDel's burst vs standing queue). Intervals without a
request count as intervals without a queue, so all relax with time. A sender's clock ahead of
the owner's looks like a queue (fewer, larger leases, still within the bound); one behind
hides it up to the skew. See docs/distributed.md, "Many limiter ids: batching and a busy owner".
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
