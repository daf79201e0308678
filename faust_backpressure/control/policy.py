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
from dataclasses import dataclass, fields

from faust_backpressure.config import BackpressureSettings
from faust_backpressure.config.settings import effective_restore_lag
from faust_backpressure.config.validation import check_int, check_number
from faust_backpressure.limiters.base import check_rate

__all__ = [
    "BackpressureController",
    "BackpressureSeverity",
    "BackpressureThresholds",
    "CircuitState",
    "PressureDecision",
    "PressureSample",
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
    """One observation: downstream lag (records), limiter utilization and CPU (0..1)."""

    lag: int
    utilization: float
    cpu: float = 0.0

    def __post_init__(self) -> None:
        check_int("lag", self.lag, 0)
        for name in ("utilization", "cpu"):
            check_number(name, getattr(self, name), 0)


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
    emergency_rate: float = 1.0
    #: Restore only below this lag; between it and ``scaling_threshold`` the rate holds
    #: (hysteresis). ``None``: ``min(max_consumer_lag // 2, scaling_threshold)``, as in the
    #: settings (with the default thresholds that is ``scaling_threshold``: no holding band).
    restore_lag: int | None = None

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
                   restore_lag=settings.effective_restore_lag)

    @property
    def effective_restore_lag(self) -> int:
        return effective_restore_lag(self.restore_lag, self.max_consumer_lag,
                                     self.scaling_threshold)

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "restore_lag" and value is None:
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


class BackpressureController:
    """Decides a limiter's rate, one :class:`PressureSample` per control interval."""

    __slots__ = ("_emergency", "_restoring", "baseline_rate", "rate", "thresholds")

    def __init__(self, baseline_rate: float,
                 thresholds: BackpressureThresholds | None = None) -> None:
        self.thresholds = thresholds or BackpressureThresholds()
        self.baseline_rate = check_rate("baseline_rate", baseline_rate)
        if self.baseline_rate < self.thresholds.emergency_rate:
            raise ValueError(f"baseline_rate must be >= emergency_rate "
                             f"({self.thresholds.emergency_rate}), got {baseline_rate!r}")
        self.rate = self.baseline_rate
        self._emergency = False
        self._restoring = False  # after an emergency, until the baseline is back

    def set_baseline(self, baseline_rate: float) -> None:
        """The configured rate changed (an operator's update): restore toward it."""
        self.baseline_rate = max(check_rate("baseline_rate", baseline_rate),
                                 self.thresholds.emergency_rate)
        self.rate = min(self.rate, self.baseline_rate)

    def state(self) -> dict[str, float | bool]:
        """What a successor needs to carry on (kept in a changelog table by the control loop)."""
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
        if lag > t.scaling_threshold:
            return self._decrease(t.lag_decrease_factor, BackpressureSeverity.CRITICAL,
                                  f"lag {lag} > {t.scaling_threshold}")
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
