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

Intervals without a request count as intervals without a queue, so both relax with time, not
with the number of requests (an owner asked once every few seconds relaxes as fast as a busy
one).

The record timestamp is the sender's wall clock: a worker whose clock runs ahead of the owner's
looks like a queue (the owner stretches: fewer, larger leases, still within the bound), one
that runs behind hides a queue (the owner reacts only once the real delay exceeds the skew).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from faust_backpressure.tables.ledger import MAX_STRETCH

__all__ = ["OwnerLoad"]

_MAX_SAMPLE = 10.0
#: Quiet intervals applied at most (enough to relax from any state to rest).
_MAX_QUIET = 100


@dataclass(slots=True)
class OwnerLoad:
    target: float = 0.05
    interval: float = 0.2
    delay: float = 0.0
    stretch: float = 1.0
    _since: float = field(default=-math.inf, repr=False)
    _least: float = field(default=math.inf, repr=False)
    _sum: float = field(default=0.0, repr=False)
    _n: int = field(default=0, repr=False)
    _after_gap: bool = field(default=False, repr=False)

    def observe(self, queued: float, now: float) -> None:
        """One request that waited ``queued`` seconds before the owner read it."""
        sample = min(max(0.0, queued), _MAX_SAMPLE)
        elapsed = now - self._since
        if elapsed >= self.interval and self._n:
            mean = self._sum / self._n
            self._update(min(self._least, sample) if self._after_gap else mean)
            quiet = int(elapsed / self.interval) - 1
            for _ in range(min(_MAX_QUIET, quiet)):
                self._update(0.0)
            self._after_gap = quiet > 0
            self._least, self._sum, self._n = math.inf, 0.0, 0
        if not self._n:
            self._since = now
        self._least = min(self._least, sample)
        self._sum += sample
        self._n += 1

    def _update(self, mean: float) -> None:
        self.delay = 0.5 * self.delay + 0.5 * mean
        if mean > self.target:
            self.stretch = min(MAX_STRETCH,
                               self.stretch * (1.0 + 0.5 * min(1.0, mean / self.target - 1.0)))
        elif mean < 0.5 * self.target:
            self.stretch = max(1.0, self.stretch * 0.95)
