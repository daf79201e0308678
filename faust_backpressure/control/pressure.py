"""The control loop's vocabulary: a pressure sample, the policy's thresholds and set-point
tuning, and the decision (rate, severity, circuit state). Pure data, validated on creation."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

from faust_backpressure.config import BackpressureSettings
from faust_backpressure.config.settings import effective_restore_lag
from faust_backpressure.config.validation import check_int, check_number

__all__ = ["BackpressureSeverity", "BackpressureThresholds", "CircuitState", "PressureDecision",
           "PressureSample", "SetPointTuning"]


class BackpressureSeverity(enum.IntEnum):
    """How hard the downstream is pushing back, from none to drowning (see ``CircuitState``)."""

    NORMAL = 0
    WARNING = 1
    CRITICAL = 2
    EMERGENCY = 3


class CircuitState(enum.Enum):
    """The control loop's circuit: closed (normal), open (emergency rate), half-open (restoring)."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class PressureSample:
    """One observation: downstream lag (records), limiter utilization and CPU (0..1).

    ``processed``: the downstream group's committed offsets summed over the partitions of
    its topics (a running count of what it has processed), and ``at``: when the sample was
    taken (seconds, any clock that only moves forward). With both, the controller estimates
    the downstream's processing rate from successive samples; the set-point policy and lag
    in seconds need them.
    """

    lag: int
    utilization: float
    cpu: float = 0.0
    processed: int | None = None
    at: float | None = None
    #: How many members (workers) the downstream group has, if known: for the scale-out
    #: recommendation (``PressureDecision.recommended_workers``).
    members: int | None = None
    #: The failure rate of the systems the stream calls (0..1), if it calls any through
    #: guards: a restore waits while it is at or above ``max_error_rate``.
    error_rate: float | None = None

    def __post_init__(self) -> None:
        check_int("lag", self.lag, 0)
        if self.error_rate is not None and not 0 <= check_number(
                "error_rate", self.error_rate, 0) <= 1:
            raise ValueError(f"error_rate must be in [0, 1], got {self.error_rate!r}")
        if self.members is not None:
            check_int("members", self.members, 0)
        for name in ("utilization", "cpu"):
            check_number(name, getattr(self, name), 0)
        if self.processed is not None:
            check_int("processed", self.processed, 0)
        if self.at is not None:
            check_number("at", self.at)


@dataclass(frozen=True, slots=True)
class BackpressureThresholds:
    """The policy's knobs: lags in records, utilization and CPU as shares of 1, factors that
    multiply the rate, ``restore_step`` as a share of the baseline, ``emergency_rate`` in
    permits per second."""

    scaling_threshold: int = 5_000
    max_consumer_lag: int = 10_000
    critical_lag: int = 20_000
    backlog_cleared_lag: int = 1_000
    high_utilization: float = 0.9
    emergency_utilization: float = 0.95
    cpu_threshold: float = 0.85
    lag_decrease_factor: float = 0.8
    decrease_factor: float = 0.9
    restore_step: float = 0.1
    #: A restore (any rise of the rate) waits while the called systems fail this often or
    #: more (the guide's ``ErrorRate < 0.01``).
    max_error_rate: float = 0.01
    emergency_rate: float = 1.0
    #: Restore only below this lag; between it and ``scaling_threshold`` the rate holds
    #: (hysteresis). ``None``: ``min(max_consumer_lag // 2, scaling_threshold)``, as in the
    #: settings (with the default thresholds that is ``scaling_threshold``: no holding band).
    restore_lag: int | None = None
    #: The lag the set-point policy holds. ``None``: half of ``scaling_threshold``. Must lie
    #: in (``backlog_cleared_lag``, ``scaling_threshold``].
    set_point_lag: int | None = None
    #: Optional bound on how far behind the downstream may be in time (lag / its measured
    #: rate): above it, the step policy decreases as above ``scaling_threshold``; the
    #: set-point policy also holds the lag at no more than half of it in time.
    max_lag_seconds: float | None = None

    @classmethod
    def from_settings(cls, settings: BackpressureSettings) -> BackpressureThresholds:
        """From the app's settings: ``max_consumer_lag``, ``scaling_threshold`` and the
        effective ``restore_lag``; the critical lag is twice the maximum (20,000 for the
        default 10,000) and the backlog counts as cleared under a fifth of the scaling
        threshold (1,000 for the default 5,000)."""
        return cls(max_consumer_lag=settings.max_consumer_lag,
                   scaling_threshold=settings.scaling_threshold,
                   critical_lag=2 * settings.max_consumer_lag,
                   backlog_cleared_lag=max(1, settings.scaling_threshold // 5),
                   restore_lag=settings.effective_restore_lag,
                   max_lag_seconds=settings.max_lag_seconds)

    @property
    def effective_restore_lag(self) -> int:
        return effective_restore_lag(self.restore_lag, self.max_consumer_lag,
                                     self.scaling_threshold)

    @property
    def effective_set_point_lag(self) -> int:
        if self.set_point_lag is not None:
            return self.set_point_lag
        return max(self.scaling_threshold // 2, self.backlog_cleared_lag + 1)

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in ("restore_lag", "set_point_lag", "max_lag_seconds") \
                    and value is None:
                continue
            check_number(field.name, value, 0, strict=True)
        if not (self.backlog_cleared_lag < self.scaling_threshold <= self.max_consumer_lag
                <= self.critical_lag):
            raise ValueError("lag thresholds must satisfy backlog_cleared_lag < "
                             "scaling_threshold <= max_consumer_lag <= critical_lag, got "
                             f"{self.backlog_cleared_lag}, {self.scaling_threshold}, "
                             f"{self.max_consumer_lag}, {self.critical_lag}")
        if not 0 < self.effective_restore_lag <= self.scaling_threshold:
            raise ValueError(f"restore_lag must be in (0, scaling_threshold], "
                             f"got {self.restore_lag!r}")
        if not (self.backlog_cleared_lag < self.effective_set_point_lag
                <= self.scaling_threshold):
            raise ValueError(f"set_point_lag must be in (backlog_cleared_lag, "
                             f"scaling_threshold], got {self.set_point_lag!r}")
        for name in ("lag_decrease_factor", "decrease_factor", "restore_step"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")


@dataclass(frozen=True, slots=True)
class PressureDecision:
    """The policy's decision on one sample: the rate, severity, circuit, shed or not, why."""

    rate: float
    severity: BackpressureSeverity
    circuit: CircuitState
    shed: bool
    reason: str
    #: The downstream's estimated processing rate (records/s), if known.
    downstream_rate: float | None = None
    #: How far behind the downstream is in time: lag / ``downstream_rate`` (``inf`` when it
    #: processes nothing while lagging), if known.
    lag_seconds: float | None = None
    #: Scale-out recommendation: how many downstream workers would keep its lag at the set
    #: point with this limiter at its baseline rate (while it is behind and the limiter is
    #: throttled under 90% of its baseline: its workers times the baseline over its measured
    #: pace); its current count otherwise; None when unknown (no member count, no settled
    #: rate estimate). More workers than the downstream topics' partitions would sit idle.
    recommended_workers: int | None = None


@dataclass(frozen=True, slots=True)
class SetPointTuning:
    """The set-point policy's knobs, durations in control intervals.

    ``horizon``: the lag error is closed over this many intervals (the proportional gain is
    1 / (horizon x interval)); ``rate_window``: the downstream rate is the slope of its
    processed count over at least this many intervals (several of the downstream's offset
    commits: a commit is seen up to an interval late, so the window bounds that error),
    smoothed by an EWMA of weight ``smoothing``; ``deadband``: a new rate within this share
    of the current one is not applied (no chatter); ``stall_intervals``: a lagging downstream
    that processed nothing for this long is stalled (emergency); the others: below.
    """

    horizon: float = 15.0
    rate_window: float = 20.0
    smoothing: float = 0.5
    deadband: float = 0.05
    stall_intervals: float = 5.0
    #: The lag the law uses is averaged over this many intervals: about one of the
    #: downstream's commit cycles (Faust's 2.8 s), which flattens the saw-tooth of chunked
    #: commits; longer is a delay in the loop (it over- and undershoots).
    lag_window: float = 3.0
    #: Below the set point, the rate falls to the law only while the limiter binds and
    #: admits more than ``1 + ahead_margin`` times the downstream's estimated rate (above
    #: the estimate's error: the queue surely grows).
    ahead_margin: float = 0.1
    #: The law goes at most this share below the downstream's rate: a downstream that is
    #: behind is kept busy while its queue drains (see docs/control-loop.md for the values).
    max_cut: float = 0.15
    #: A limiter whose utilization stayed under this share for the last 3 intervals is
    #: offered far less than its rate: the pressure is over, and with the lag at or under the
    #: set point it restores at once instead of waiting for the downstream's queue to clear
    #: (well under what a saturated distributed limiter reads: docs/control-loop.md).
    idle_utilization: float = 0.25

    def __post_init__(self) -> None:
        for field in fields(self):
            check_number(field.name, getattr(self, field.name), 0, strict=True)
        for name in ("smoothing", "deadband", "max_cut", "idle_utilization"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
