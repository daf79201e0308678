"""The backpressure policy: from a pressure sample to a limiter's next rate. Pure, no I/O.

A limiter protects a downstream stage; the control loop samples that stage's consumer lag,
the limiter's utilization and CPU once per interval and asks :class:`BackpressureController`
what the limiter's rate should be. Lags are in records; the default thresholds are 1,000
(backlog cleared), 5,000 (scaling), 10,000 (maximum) and 20,000 (critical). Checked in this
order:

* emergency: lag above ``critical_lag``, or utilization above ``emergency_utilization`` with
  lag above ``max_consumer_lag``: the rate drops to ``emergency_rate`` (near zero, never zero)
  and stays there until the lag is below ``backlog_cleared_lag``; above ``critical_lag`` the
  decision also asks for load shedding (to the shed topic, never a silent drop);
* lag above ``scaling_threshold``: rate times ``lag_decrease_factor``;
* CPU above ``cpu_threshold``, or utilization above ``high_utilization`` while the lag is above
  ``backlog_cleared_lag`` (a queue is building): rate times ``decrease_factor``;
* otherwise (no pressure): gradual restore, ``restore_step`` of the baseline per interval,
  up to the baseline.

The severity doubles as a circuit breaker's state: ``EMERGENCY`` is open (fail fast: admit
almost nothing), ``CRITICAL`` after an emergency is half-open (restoring, back to open on any
relapse), ``NORMAL``/``WARNING`` are closed.

Example::

    controller = BackpressureController(baseline_rate=1000)
    decision = controller.decide(PressureSample(lag=12_000, utilization=0.97, cpu=0.4))
    limiter.update_rate_limit(decision.rate)     # 1.0: emergency until lag < 1000
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import deque
from dataclasses import dataclass, fields

from faust_backpressure.config import CONTROL_POLICIES, BackpressureSettings, ControlPolicy
from faust_backpressure.config.settings import effective_restore_lag
from faust_backpressure.config.validation import check_int, check_number
from faust_backpressure.limiters.base import check_rate

__all__ = [
    "BackpressureController",
    "BackpressureSeverity",
    "BackpressureThresholds",
    "CircuitState",
    "DownstreamRateEstimator",
    "PressureDecision",
    "PressureSample",
    "SetPointTuning",
]


class BackpressureSeverity(enum.IntEnum):
    """How hard the downstream is pushing back, from none to drowning (see ``CircuitState``)."""

    NORMAL = 0
    WARNING = 1
    CRITICAL = 2
    EMERGENCY = 3


class CircuitState(enum.Enum):
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
    #: pace); its current count otherwise; None
    #: when unknown (no member count, no settled rate estimate). More workers than the
    #: partitions of the downstream topics would sit idle: compare before scaling.
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
    #: behind is kept busy while its queue drains (issue 12 on the real broker: unbounded,
    #: a lag of 1,400 asked for 2/s against a downstream of 100/s, then overshot).
    max_cut: float = 0.15
    #: A limiter whose utilization stayed under this share for the last 3 intervals is
    #: offered far less than its rate: the pressure is over, and with the lag at or under the
    #: set point it restores at once instead of waiting for the downstream's queue to clear.
    #: (On the real broker a saturated distributed limiter read 0.41-0.87 at times, once 5
    #: intervals running at 0.41-0.47; once its input was drained, 0.00-0.11.)
    idle_utilization: float = 0.25

    def __post_init__(self) -> None:
        for field in fields(self):
            check_number(field.name, getattr(self, field.name), 0, strict=True)
        for name in ("smoothing", "deadband", "max_cut", "idle_utilization"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")


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
        self.changes = sum(1 for (_, before), (_, p) in itertools.pairwise(history)
                           if p > before)
        if len(history) < 2:
            return self.rate
        (t0, p0), (t1, p1) = history[0], history[-1]
        raw = (p1 - p0) / (t1 - t0)
        # Commits come in chunks: the slope between the first and the last sample that saw
        # a new commit does not depend on where the window cuts the commit cycle. Used while
        # commits keep coming at their usual pace (else the plain slope, which decays).
        changes = [(t, p) for (t, p), (_, before) in zip(list(history)[1:], history,
                                                        strict=False) if p > before]
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


class BackpressureController:
    """Decides a limiter's rate, one :class:`PressureSample` per control interval.

    ``policy="setpoint"`` (default) holds the downstream lag near
    ``thresholds.effective_set_point_lag`` at the downstream's measured pace (it needs
    samples with ``processed`` and ``at``); ``policy="step"`` is the reference guide's step
    policy. Both share the safety rails (emergency, relapse, shed, circuit breaker).
    ``interval``: the nominal seconds between decisions (the set-point tuning is in
    intervals).
    """

    __slots__ = ("_emergency", "_estimator", "_mean_lag", "_recent_lags",
                 "_recent_utilization", "_restoring",
                 "baseline_rate", "interval", "policy", "rate", "thresholds", "tuning")

    def __init__(self, baseline_rate: float,
                 thresholds: BackpressureThresholds | None = None, *,
                 policy: ControlPolicy = "setpoint", interval: float = 5.0,
                 tuning: SetPointTuning | None = None) -> None:
        self.thresholds = thresholds or BackpressureThresholds()
        self.baseline_rate = check_rate("baseline_rate", baseline_rate)
        if self.baseline_rate < self.thresholds.emergency_rate:
            raise ValueError(f"baseline_rate must be >= emergency_rate "
                             f"({self.thresholds.emergency_rate}), got {baseline_rate!r}")
        if policy not in CONTROL_POLICIES:
            raise ValueError(f"policy must be one of {', '.join(CONTROL_POLICIES)}, "
                             f"got {policy!r}")
        self.policy: ControlPolicy = policy
        self.interval = check_rate("interval", interval)
        self.tuning = tuning or SetPointTuning()
        self._estimator = DownstreamRateEstimator(self.tuning.rate_window * self.interval,
                                                  self.tuning.smoothing,
                                                  self.tuning.lag_window * self.interval)
        self.rate = self.baseline_rate
        self._emergency = False
        self._restoring = False  # after an emergency, until the baseline is back
        self._mean_lag = 0.0
        #: The last few lags: their minimum is the backlog right after the downstream's
        #: latest commit (between commits the measured lag also counts what it processed).
        self._recent_lags: deque[int] = deque(maxlen=3)
        #: The last few utilizations: the limiter binds (what flows is its rate) when the
        #: highest is high. One reading is noisy on a distributed limiter (issue 12: a third
        #: of the readings of a saturated one dipped to 0.59-0.87); three in a row are not.
        self._recent_utilization: deque[float] = deque(maxlen=3)

    @property
    def downstream_rate(self) -> float | None:
        """The downstream's estimated processing rate (records/s), once two samples with
        ``processed`` and ``at`` arrived."""
        return self._estimator.rate

    def set_baseline(self, baseline_rate: float) -> None:
        """The configured rate changed (an operator's update): restore toward it."""
        self.baseline_rate = max(check_rate("baseline_rate", baseline_rate),
                                 self.thresholds.emergency_rate)
        self.rate = min(self.rate, self.baseline_rate)

    def state(self) -> dict[str, float | bool]:
        """What a successor needs to carry on (kept in a changelog table by the control loop).

        The downstream rate estimate is not part of it: a successor measures it again."""
        return {"rate": self.rate, "baseline_rate": self.baseline_rate,
                "emergency": self._emergency, "restoring": self._restoring}

    def restore(self, state: dict[str, float | bool]) -> None:
        """Carry on from :meth:`state` of a predecessor (e.g. after a fail-over).

        The baseline stays this controller's own: it is configuration, and may have changed.
        """
        rate = check_rate("rate", float(state["rate"]))
        self.rate = min(max(rate, self.thresholds.emergency_rate), self.baseline_rate)
        self._emergency = bool(state["emergency"])
        self._restoring = bool(state["restoring"])

    def decide(self, sample: PressureSample) -> PressureDecision:
        downstream = None
        self._mean_lag = float(sample.lag)
        self._recent_lags.append(sample.lag)
        self._recent_utilization.append(sample.utilization)
        if sample.processed is not None and sample.at is not None:
            downstream = self._estimator.update(sample.at, sample.processed)
            self._mean_lag = self._estimator.mean_lag(sample.at, sample.lag)
        lag_seconds = None
        if downstream is not None:
            lag_seconds = (sample.lag / downstream if downstream > 0
                           else (math.inf if sample.lag > 0 else 0.0))
        before = self.rate
        decision = self._decide(sample, downstream, lag_seconds)
        if (decision.rate > before and sample.error_rate is not None
                and sample.error_rate >= self.thresholds.max_error_rate):
            self.rate = before  # what it calls still fails: no rise until that calms down
            decision = self._hold(f"holding: downstream error rate {sample.error_rate:.3f} "
                                  f">= {self.thresholds.max_error_rate}")
        return PressureDecision(decision.rate, decision.severity, decision.circuit,
                                decision.shed, decision.reason, downstream, lag_seconds,
                                self._recommend(sample, downstream))

    def _recommend(self, sample: PressureSample, downstream: float | None) -> int | None:
        """Downstream workers for the baseline rate at the set point (see the decision)."""
        if not sample.members or downstream is None or not self._estimator.settled:
            return None
        if (min(self._recent_lags) < self.thresholds.backlog_cleared_lag or downstream <= 0
                or self.rate >= 0.9 * self.baseline_rate):
            # It keeps up, or the limiter is (nearly) at its base rate anyway: no throttling
            # to undo (a stalled downstream: more workers would not help).
            return sample.members
        # Behind, and the limiter throttled for it: its pace is its capacity; enough of them
        # for the baseline rate (a backlog over the set point drains once they keep up). A
        # tenth of a worker is within the rate estimate's error (a few percent).
        return max(sample.members,
                   math.ceil(sample.members * self.baseline_rate / downstream - 0.1))

    def _decide(self, sample: PressureSample, downstream: float | None,
                lag_seconds: float | None) -> PressureDecision:
        t = self.thresholds
        lag = sample.lag
        if self._emergency:
            if lag >= t.backlog_cleared_lag:
                return self._emergency_decision(sample, "backlog not cleared")
            self._emergency, self._restoring = False, True
        elif self._restoring and lag > t.scaling_threshold:  # half-open: a relapse reopens
            return self._enter_emergency(sample, f"lag {lag} > {t.scaling_threshold} "
                                                 "while restoring")
        if lag > t.critical_lag:
            return self._enter_emergency(sample, f"lag {lag} > critical {t.critical_lag}")
        if sample.utilization > t.emergency_utilization and lag > t.max_consumer_lag:
            return self._enter_emergency(
                sample, f"utilization {sample.utilization:.2f} > {t.emergency_utilization} "
                        f"and lag {lag} > {t.max_consumer_lag}")
        too_late = (t.max_lag_seconds is not None and lag_seconds is not None
                    and lag_seconds > t.max_lag_seconds)
        if self.policy == "setpoint":
            return self._set_point(sample, downstream, lag_seconds, too_late)
        if lag > t.scaling_threshold:
            return self._decrease(t.lag_decrease_factor, BackpressureSeverity.CRITICAL,
                                  f"lag {lag} > {t.scaling_threshold}")
        if too_late:
            return self._decrease(t.lag_decrease_factor, BackpressureSeverity.CRITICAL,
                                  f"lag {lag_seconds:.1f} s > {t.max_lag_seconds} s")
        if sample.cpu > t.cpu_threshold:
            return self._decrease(t.decrease_factor, BackpressureSeverity.WARNING,
                                  f"cpu {sample.cpu:.2f} > {t.cpu_threshold}")
        if sample.utilization > t.high_utilization and lag >= t.backlog_cleared_lag:
            return self._decrease(t.decrease_factor, BackpressureSeverity.WARNING,
                                  f"utilization {sample.utilization:.2f} > "
                                  f"{t.high_utilization} with lag {lag}")
        if lag >= t.effective_restore_lag and lag > 0:
            return PressureDecision(self.rate, BackpressureSeverity.WARNING if
                                    self.rate < self.baseline_rate else
                                    BackpressureSeverity.NORMAL, self._circuit(), False,
                                    f"holding: lag {lag} >= restore lag {t.effective_restore_lag}")
        return self._restore()

    # -- the set-point policy ------------------------------------------------------------

    def _set_point(self, sample: PressureSample, downstream: float | None,
                   lag_seconds: float | None, too_late: bool) -> PressureDecision:
        """rate = downstream rate + (set point - lag) / horizon, within the rails."""
        t, tuning = self.thresholds, self.tuning
        lag = sample.lag
        if (sample.at is not None and lag >= t.backlog_cleared_lag
                and self._estimator.idle_for(sample.at)
                >= tuning.stall_intervals * self.interval):
            return self._enter_emergency(
                sample, f"downstream stalled: nothing processed for "
                        f"{self._estimator.idle_for(sample.at):.1f} s with lag {lag}")
        if downstream is None or not self._estimator.settled:  # the guide's rails only
            if lag < t.backlog_cleared_lag:
                return self._restore()
            if (downstream is not None and lag > t.effective_set_point_lag
                    and max(self._recent_utilization) > t.high_utilization
                    and lag >= max(self._recent_lags)):
                # The downstream is starting (its first commits): a binding limiter whose
                # lag passes the set point and grows is ahead of it already; the guide's cut
                # until the estimate spans a commit cycle.
                return self._decrease(t.lag_decrease_factor, BackpressureSeverity.WARNING,
                                      f"lag {lag} > set point {t.effective_set_point_lag} "
                                      "and growing (rate estimate not settled)")
            if lag > t.scaling_threshold or too_late:
                return self._decrease(t.lag_decrease_factor, BackpressureSeverity.CRITICAL,
                                      (f"lag {lag} > {t.scaling_threshold}"
                                       if lag > t.scaling_threshold else
                                       f"lag {lag_seconds:.1f} s > {t.max_lag_seconds} s")
                                      + " (no rate estimate)")
            return self._hold("no downstream rate estimate yet")
        set_point = t.effective_set_point_lag
        if t.max_lag_seconds is not None:  # at most half the allowed time behind
            set_point = min(set_point, max(1, int(downstream * t.max_lag_seconds / 2)))
        mean_lag = self._mean_lag
        law = max(downstream + (set_point - mean_lag) / (tuning.horizon * self.interval),
                  downstream * (1 - tuning.max_cut))
        reason = (f"set point {set_point}: lag {lag} (mean {mean_lag:.0f}), downstream "
                  f"{downstream:.1f}/s, law {law:.1f}/s")
        # The limiter binds (what flows is its rate) and admits clearly more than the
        # downstream processes: the queue grows, whatever the lag reads now.
        binding = max(self._recent_utilization) > t.high_utilization
        ahead = binding and self.rate > downstream * (1 + tuning.ahead_margin)
        rate = self.rate
        severity = BackpressureSeverity.WARNING
        if lag > t.scaling_threshold or too_late:
            # Rail: the guide's cut while the queue still grows (the rate above the
            # downstream's); once it drains, the law (below the downstream rate here) alone:
            # cut after cut while the lag falls took the rate to a fifth of the downstream's.
            rail = self.rate * t.lag_decrease_factor if self.rate > downstream else self.rate
            rate = min(law, rail)
            severity = BackpressureSeverity.CRITICAL
            reason = (f"lag {lag} > {t.scaling_threshold}" if lag > t.scaling_threshold
                      else f"lag {lag_seconds:.1f} s > {t.max_lag_seconds} s") + f"; {reason}"
        elif min(self._recent_lags) < t.backlog_cleared_lag and not ahead:
            # Rail: the guide's restore while nothing queues and the rate is not already
            # ahead of the downstream (issue 12: steps of +10% of the base on a queue that
            # had just emptied took the rate to 2.6x the downstream's, and the lag over 1,000).
            rate = max(law, self.rate + t.restore_step * self.baseline_rate)
            reason = f"backlog cleared; {reason}"
        elif (len(self._recent_utilization) == self._recent_utilization.maxlen
              and max(self._recent_utilization) < tuning.idle_utilization
              and mean_lag <= set_point):
            rate = max(law, self.rate + t.restore_step * self.baseline_rate)
            reason = f"pressure over (limiter idle); {reason}"
        elif mean_lag > set_point or law > self.rate or ahead:
            # The law, both ways above the set point; below it the rate rises to the law,
            # and falls to it only while it is ahead of the downstream: a limiter that is
            # not the bottleneck is not throttled to what currently flows.
            rate = law
        rate = min(max(rate, t.emergency_rate), self.baseline_rate)
        edge = rate in (self.baseline_rate, t.emergency_rate) and rate != self.rate
        if not edge and abs(rate - self.rate) <= tuning.deadband * self.rate:
            rate = self.rate  # deadband: no chatter
        self.rate = rate
        if self._restoring and (self.rate >= self.baseline_rate or lag >= set_point):
            self._restoring = False  # baseline back, or the lag regulated at the set point
        if self._restoring:
            severity = max(severity, BackpressureSeverity.CRITICAL)
        elif self.rate >= self.baseline_rate and severity < BackpressureSeverity.CRITICAL:
            severity = BackpressureSeverity.NORMAL
        return PressureDecision(self.rate, severity, self._circuit(), False, reason)

    def _hold(self, reason: str) -> PressureDecision:
        severity = (BackpressureSeverity.CRITICAL if self._restoring else
                    BackpressureSeverity.WARNING if self.rate < self.baseline_rate else
                    BackpressureSeverity.NORMAL)
        return PressureDecision(self.rate, severity, self._circuit(), False, reason)

    # -- steps ---------------------------------------------------------------------------

    def _enter_emergency(self, sample: PressureSample, reason: str) -> PressureDecision:
        self._emergency, self._restoring = True, False
        return self._emergency_decision(sample, reason)

    def _emergency_decision(self, sample: PressureSample, reason: str) -> PressureDecision:
        self.rate = self.thresholds.emergency_rate
        return PressureDecision(self.rate, BackpressureSeverity.EMERGENCY, CircuitState.OPEN,
                                sample.lag > self.thresholds.critical_lag, reason)

    def _decrease(self, factor: float, severity: BackpressureSeverity,
                  reason: str) -> PressureDecision:
        self.rate = max(self.rate * factor, self.thresholds.emergency_rate)
        return PressureDecision(self.rate, severity, self._circuit(), False, reason)

    def _restore(self) -> PressureDecision:
        if self.rate < self.baseline_rate:
            step = self.thresholds.restore_step * self.baseline_rate
            self.rate = min(self.rate + step, self.baseline_rate)
            reason = "restoring"
        else:
            reason = "no pressure"
        if self.rate >= self.baseline_rate:
            self._restoring = False
        severity = (BackpressureSeverity.CRITICAL if self._restoring
                    else BackpressureSeverity.NORMAL)
        return PressureDecision(self.rate, severity, self._circuit(), False, reason)

    def _circuit(self) -> CircuitState:
        return CircuitState.HALF_OPEN if self._restoring else CircuitState.CLOSED
