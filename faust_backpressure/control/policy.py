"""The backpressure policy: from a pressure sample to a limiter's next rate. Pure, no I/O.

The sample, thresholds and decision types are in :mod:`~faust_backpressure.control.pressure`
and the downstream rate estimate in :mod:`~faust_backpressure.control.rate_estimate` (both
re-exported here).

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

import math
from collections import deque

from faust_backpressure.config import CONTROL_POLICIES, ControlPolicy
from faust_backpressure.control.pressure import (
    BackpressureSeverity,
    BackpressureThresholds,
    CircuitState,
    PressureDecision,
    PressureSample,
    SetPointTuning,
)
from faust_backpressure.control.rate_estimate import DownstreamRateEstimator
from faust_backpressure.limiters.base import check_rate

__all__ = ["BackpressureController", "BackpressureSeverity", "BackpressureThresholds",
           "CircuitState", "DownstreamRateEstimator", "PressureDecision", "PressureSample",
           "SetPointTuning"]


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
        #: highest is high. One reading is noisy on a distributed limiter; three in a row are
        #: not (docs/control-loop.md).
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
        if lag > t.scaling_threshold or too_late:
            return self._decrease(t.lag_decrease_factor, BackpressureSeverity.CRITICAL,
                                  self._too_far(lag, lag_seconds))
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
        if downstream is None or not self._estimator.settled:
            return self._unsettled(sample, downstream, lag_seconds, too_late)
        set_point = t.effective_set_point_lag
        if t.max_lag_seconds is not None:  # at most half the allowed time behind
            set_point = min(set_point, max(1, int(downstream * t.max_lag_seconds / 2)))
        mean_lag = self._mean_lag
        law = max(downstream + (set_point - mean_lag) / (tuning.horizon * self.interval),
                  downstream * (1 - tuning.max_cut))
        reason = (f"set point {set_point}: lag {lag} (mean {mean_lag:.0f}), downstream "
                  f"{downstream:.1f}/s, law {law:.1f}/s")
        rate, severity, reason = self._rails(sample, downstream, lag_seconds, too_late,
                                             set_point, law, reason)
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

    def _unsettled(self, sample: PressureSample, downstream: float | None,
                   lag_seconds: float | None, too_late: bool) -> PressureDecision:
        """No settled downstream rate yet: the guide's rails only."""
        t = self.thresholds
        lag = sample.lag
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
                                  f"{self._too_far(lag, lag_seconds)} (no rate estimate)")
        return self._hold("no downstream rate estimate yet")

    def _rails(self, sample: PressureSample, downstream: float, lag_seconds: float | None,
               too_late: bool, set_point: int, law: float, reason: str
               ) -> tuple[float, BackpressureSeverity, str]:
        """The set-point law's rate, or a rail's: (rate, severity, reason)."""
        t, tuning = self.thresholds, self.tuning
        lag, mean_lag = sample.lag, self._mean_lag
        # The limiter binds (what flows is its rate) and admits clearly more than the
        # downstream processes: the queue grows, whatever the lag reads now.
        binding = max(self._recent_utilization) > t.high_utilization
        ahead = binding and self.rate > downstream * (1 + tuning.ahead_margin)
        if lag > t.scaling_threshold or too_late:
            # The guide's cut while the queue still grows (the rate above the downstream's);
            # once it drains, the law alone (repeated cuts on a falling lag overshoot down).
            rail = self.rate * t.lag_decrease_factor if self.rate > downstream else self.rate
            return (min(law, rail), BackpressureSeverity.CRITICAL,
                    f"{self._too_far(lag, lag_seconds)}; {reason}")
        restored = max(law, self.rate + t.restore_step * self.baseline_rate)
        if min(self._recent_lags) < t.backlog_cleared_lag and not ahead:
            # The guide's restore while nothing queues and the rate is not already ahead of
            # the downstream (restoring past it refills the queue just emptied).
            return restored, BackpressureSeverity.WARNING, f"backlog cleared; {reason}"
        if (len(self._recent_utilization) == self._recent_utilization.maxlen
                and max(self._recent_utilization) < tuning.idle_utilization
                and mean_lag <= set_point):
            return (restored, BackpressureSeverity.WARNING,
                    f"pressure over (limiter idle); {reason}")
        if mean_lag > set_point or law > self.rate or ahead:
            # The law, both ways above the set point; below it the rate rises to the law,
            # and falls to it only while it is ahead of the downstream: a limiter that is
            # not the bottleneck is not throttled to what currently flows.
            return law, BackpressureSeverity.WARNING, reason
        return self.rate, BackpressureSeverity.WARNING, reason

    def _too_far(self, lag: int, lag_seconds: float | None) -> str:
        """Why the downstream is too far behind: its lag in records (over the scaling
        threshold), else in time (over ``max_lag_seconds``)."""
        t = self.thresholds
        if lag > t.scaling_threshold:
            return f"lag {lag} > {t.scaling_threshold}"
        return f"lag {lag_seconds:.1f} s > {t.max_lag_seconds} s"

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
