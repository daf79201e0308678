"""The downstream's processing rate, estimated from its committed offsets over time."""

from __future__ import annotations

import itertools
from collections import deque

from faust_backpressure.config.validation import check_number

__all__ = ["DownstreamRateEstimator"]


class DownstreamRateEstimator:
    """The downstream's processing rate from ``(at, processed)`` samples: the slope of the
    processed count over the last ``window`` seconds (so that it spans several offset
    commits, which come in chunks), smoothed by an EWMA. A count that goes backwards or a
    clock that does not move forward (a reset group, a new clock) starts over."""

    __slots__ = ("_history", "_lags", "changes", "lag_window", "last_progress_at", "rate",
                 "smoothing", "window")

    def __init__(self, window: float, smoothing: float,
                 lag_window: float | None = None) -> None:
        """``lag_window``: the span of :meth:`mean_lag` (default ``window``)."""
        self.window = check_number("window", window, 0, strict=True)
        self.smoothing = check_number("smoothing", smoothing, 0, strict=True)
        self.lag_window = self.window if lag_window is None else check_number(
            "lag_window", lag_window, 0, strict=True)
        self._history: deque[tuple[float, int]] = deque()
        self._lags: deque[tuple[float, int]] = deque()
        self.rate: float | None = None
        #: How many times the processed count moved within the window (commits seen).
        self.changes = 0
        #: When the processed count last moved (or was first seen).
        self.last_progress_at: float | None = None

    def update(self, at: float, processed: int) -> float | None:
        history = self._history
        if history and (at <= history[-1][0] or processed < history[-1][1]):
            history.clear()
            self.rate = self.last_progress_at = None
            self.changes = 0
        if not history or processed > history[-1][1]:
            self.last_progress_at = at
        history.append((at, processed))
        # Keep one sample at or before the window's start, so the slope spans the window.
        while len(history) > 2 and history[1][0] <= at - self.window:
            history.popleft()
        was_settled = self.settled
        # the samples that saw a new commit
        changes = [(t, p) for (_, before), (t, p) in itertools.pairwise(history) if p > before]
        self.changes = len(changes)
        if len(history) < 2:
            return self.rate
        (t0, p0), (t1, p1) = history[0], history[-1]
        raw = (p1 - p0) / (t1 - t0)
        # Commits come in chunks: the slope between the first and the last sample that saw
        # a new commit does not depend on where the window cuts the commit cycle. Used while
        # commits keep coming at their usual pace (else the plain slope, which decays).
        if len(changes) >= 2:
            (ta, pa), (tb, pb) = changes[0], changes[-1]
            gap = (tb - ta) / (len(changes) - 1)
            if t1 - tb <= 1.5 * gap:
                raw = (pb - pa) / (tb - ta)
        if self.rate is None or (self.settled and not was_settled):
            self.rate = raw  # the first slope over a commit cycle: what came before is noise
        else:
            self.rate += self.smoothing * (raw - self.rate)
        return self.rate

    def mean_lag(self, at: float, lag: int) -> float:
        """The lag averaged over ``lag_window`` (the sawtooth of chunked commits flattened)."""
        lags = self._lags
        if lags and at <= lags[-1][0]:
            lags.clear()
        lags.append((at, lag))
        while lags[0][0] <= at - self.lag_window:
            lags.popleft()
        return sum(v for _, v in lags) / len(lags)

    @property
    def settled(self) -> bool:
        """Two commits or more seen within the window: the slope spans a commit cycle (before
        that, e.g. while the downstream starts, it reads far below the downstream's pace)."""
        return self.changes >= 2

    def idle_for(self, at: float) -> float:
        return 0.0 if self.last_progress_at is None else at - self.last_progress_at
