"""How busy the owner is: the queue delay of lease requests, and the stretch it asks for.

Pure (times passed in). The owner agent calls :meth:`OwnerLoad.observe` with how long each
request waited in the request topic before the owner read it (``now`` minus the record's
timestamp). Every ``interval`` the mean of those waits updates:

* ``delay``: a smoothed queue delay; a lease granted now lives ``2 * delay`` longer, so an
  answer that waited in the queue still gives a usable lease;
* ``stretch`` (1 .. ``MAX_STRETCH``): above the ``target`` delay it grows multiplicatively (up
  to 1.5x per interval), below half the target it decays by 5% per interval. The owner stretches
  renewal periods and ``retry_after`` by it: workers ask less often, for more tokens each time,
  until the queue is back at the target. Admission does not suffer from it as long as a period
  stays within the limits ``LimiterLedger.handle_lease`` puts on it.

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


@dataclass(slots=True)
class OwnerLoad:
    target: float = 0.05
    interval: float = 0.2
    delay: float = 0.0
    stretch: float = 1.0
    _since: float = field(default=-math.inf, repr=False)
    _sum: float = field(default=0.0, repr=False)
    _n: int = field(default=0, repr=False)

    def observe(self, queued: float, now: float) -> None:
        """One request that waited ``queued`` seconds before the owner read it."""
        self._sum += min(max(0.0, queued), _MAX_SAMPLE)
        self._n += 1
        if self._since == -math.inf:
            self._since = now
        elif now - self._since >= self.interval:
            self._update(self._sum / self._n)
            self._since, self._sum, self._n = now, 0.0, 0

    def _update(self, mean: float) -> None:
        self.delay = 0.5 * self.delay + 0.5 * mean
        if mean > self.target:
            self.stretch = min(MAX_STRETCH,
                               self.stretch * (1.0 + 0.5 * min(1.0, mean / self.target - 1.0)))
        elif mean < 0.5 * self.target:
            self.stretch = max(1.0, self.stretch * 0.95)
