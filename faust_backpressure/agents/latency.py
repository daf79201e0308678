"""Latency figures: percentiles over a bounded recent window, a histogram since start (pure).

The window keeps the last ``size`` observations in a ring, so memory stays the same however
long a worker runs; its percentiles say how the recent past went. The histogram's buckets and
sum count every observation since start, as Prometheus wants them (they only grow, so a
scraper can take rates, and quantiles across workers, with ``histogram_quantile``).
No clock of its own: callers measure with theirs and pass seconds in.

Example::

    window = LatencyWindow(size=1024)
    window.observe(0.120)
    window.summary().p99     # 0.12
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LATENCY_BUCKETS", "LatencySummary", "LatencyWindow", "percentile"]

#: Upper bounds (seconds) of the latency histograms' buckets (Prometheus ``le``); the same
#: for every latency the package exports, so dashboards can put them side by side.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Observations a window keeps for its percentiles.
RECENT = 1024


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of an ascending sequence; None if empty.
    Always an observed value (no interpolation): a p99 is a latency that happened."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class LatencySummary:
    """What a :class:`LatencyWindow` shows (seconds)."""

    #: Observations in the window: the percentiles' sample (at most the window's size).
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    #: Since start, one count per bound of ``LATENCY_BUCKETS`` then +Inf (not cumulative).
    buckets: list[int]
    #: Since start, the sum of every observation.
    sum: float


class LatencyWindow:
    """The last ``size`` latencies, and a histogram of all of them (see the module)."""

    def __init__(self, size: int = RECENT, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        if list(bounds) != sorted(bounds):
            raise ValueError(f"bounds must be ascending, got {bounds!r}")
        self.bounds = tuple(bounds)
        self._recent: deque[float] = deque(maxlen=size)
        self._buckets = [0] * (len(self.bounds) + 1)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)  # a clock stepping back must not make a negative latency
        self._recent.append(seconds)
        self._sum += seconds
        # le: a latency equal to a bound belongs to that bound's bucket
        self._buckets[bisect.bisect_left(self.bounds, seconds)] += 1

    def __len__(self) -> int:
        return len(self._recent)

    @property
    def total(self) -> int:
        """Observations since start."""
        return sum(self._buckets)

    def summary(self) -> LatencySummary:
        ordered = sorted(self._recent)  # at most ``size`` floats, only when someone looks
        return LatencySummary(count=len(ordered), p50=percentile(ordered, 0.50),
                              p95=percentile(ordered, 0.95), p99=percentile(ordered, 0.99),
                              buckets=list(self._buckets), sum=self._sum)
