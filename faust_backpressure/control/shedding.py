"""Priority-based load shedding: from the downstream lag to a priority threshold. Pure, no I/O.

Under critical lag a control loop with ``shed_on_critical=True`` sheds load. Gates whose
events have a priority (``bp.pipeline(..., priority=lambda value: int)``, higher is more
important) do not shed whatever the limiter refuses: they shed the events whose priority is
*below a threshold*, to the shed topic (never dropped), and the others keep waiting for
tokens. The threshold climbs a ladder while the lag stays critical and comes back down once
it has cleared:

* lag above ``critical_lag``: the first level at once; one level more every
  ``escalate_after`` seconds while the lag stays above it;
* lag between ``relax_lag`` and ``critical_lag``: the level holds (hysteresis: shedding
  is what drains the queue; stopping at the critical lag would flap around it);
* lag below ``relax_lag``: one level less every ``relax_after`` seconds, down to none.

Example::

    shedder = PriorityShedder(ShedLevels(levels=(1, 5)), critical_lag=20_000,
                              relax_lag=10_000, interval=5.0)
    shedder.update(lag=25_000, at=0.0)     # 1: priorities < 1 are shed
    shedder.update(lag=25_000, at=25.0)    # 5: after 5 intervals still critical
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from faust_backpressure.config.validation import check_int, check_number

__all__ = ["PriorityShedder", "ShedLevels"]


@dataclass(frozen=True, slots=True)
class ShedLevels:
    """The ladder: ``levels`` are priority thresholds, strictly ascending; at level ``k``
    (1-based) events with priority below ``levels[k - 1]`` are shed. With the default
    ``(1, 2, 3)``, priority 0 goes first, then 1, then 2; 3 and above are never shed.
    ``escalate_intervals`` / ``relax_intervals``: control intervals between steps up / down.
    """

    levels: Sequence[int] = (1, 2, 3)
    escalate_intervals: float = 5.0
    relax_intervals: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self.levels))
        if not self.levels:
            raise ValueError("levels must not be empty")
        for level in self.levels:
            if isinstance(level, bool) or not isinstance(level, int):
                raise ValueError(f"levels must be ints, got {level!r}")
        if any(b <= a for a, b in zip(self.levels, self.levels[1:], strict=False)):
            raise ValueError(f"levels must be strictly ascending, got {self.levels!r}")
        check_number("escalate_intervals", self.escalate_intervals, 0, strict=True)
        check_number("relax_intervals", self.relax_intervals, 0, strict=True)


class PriorityShedder:
    """The current shed threshold, one lag observation at a time (times in seconds, any
    clock that only moves forward)."""

    __slots__ = ("_calm_since", "_changed_at", "_critical_since", "config", "critical_lag",
                 "escalate_after", "level", "relax_after", "relax_lag")

    def __init__(self, config: ShedLevels | None = None, *, critical_lag: int, relax_lag: int,
                 interval: float) -> None:
        self.config = config or ShedLevels()
        self.critical_lag = check_int("critical_lag", critical_lag, 0)
        self.relax_lag = check_int("relax_lag", relax_lag, 0)
        if self.relax_lag > self.critical_lag:
            raise ValueError(f"relax_lag must be <= critical_lag, got {relax_lag!r} > "
                             f"{critical_lag!r}")
        interval = check_number("interval", interval, 0, strict=True)
        self.escalate_after = self.config.escalate_intervals * interval
        self.relax_after = self.config.relax_intervals * interval
        #: 0: no shedding; k: events with priority below ``levels[k - 1]`` are shed.
        self.level = 0
        self._changed_at = 0.0
        self._critical_since: float | None = None
        self._calm_since: float | None = None

    @property
    def threshold(self) -> int | None:
        """Events with a priority below this are shed; ``None``: none is."""
        return None if self.level == 0 else self.config.levels[self.level - 1]

    def update(self, lag: int, at: float) -> int | None:
        """One observation of the downstream lag at time ``at``; returns :attr:`threshold`."""
        if lag > self.critical_lag:
            self._calm_since = None
            if self._critical_since is None:
                self._critical_since = at
            if self.level == 0:
                self._step(1, at)
            elif (self.level < len(self.config.levels)
                  and at - max(self._critical_since, self._changed_at) >= self.escalate_after):
                self._step(self.level + 1, at)
        elif lag >= self.relax_lag:
            self._critical_since = self._calm_since = None  # hold
        else:
            self._critical_since = None
            if self._calm_since is None:
                self._calm_since = at
            if (self.level > 0
                    and at - max(self._calm_since, self._changed_at) >= self.relax_after):
                self._step(self.level - 1, at)
        return self.threshold

    def _step(self, level: int, at: float) -> None:
        self.level, self._changed_at = level, at
