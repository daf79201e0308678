"""The reference guide's step policy: thresholds, emergency until the backlog clears, gradual
restore (``policy="step"``; the set-point policy is in test_setpoint.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faust_backpressure.config import BackpressureSettings
from faust_backpressure.control.policy import (
    BackpressureController,
    BackpressureSeverity,
    BackpressureThresholds,
    CircuitState,
    PressureSample,
)

Severity = BackpressureSeverity


def step(baseline_rate: float, thresholds: BackpressureThresholds | None = None
         ) -> BackpressureController:
    return BackpressureController(baseline_rate, thresholds, policy="step")


def sample(lag: int, utilization: float = 0.5, cpu: float = 0.1) -> PressureSample:
    return PressureSample(lag=lag, utilization=utilization, cpu=cpu)


def test_default_thresholds() -> None:
    t = BackpressureThresholds()
    assert (t.backlog_cleared_lag, t.scaling_threshold, t.max_consumer_lag, t.critical_lag) == \
        (1_000, 5_000, 10_000, 20_000)
    assert (t.high_utilization, t.emergency_utilization) == (0.9, 0.95)
    assert (t.lag_decrease_factor, t.decrease_factor, t.emergency_rate) == (0.8, 0.9, 1.0)


def test_emergency_holds_until_the_backlog_clears_then_restores_gradually() -> None:
    controller = step(baseline_rate=1000)
    first = controller.decide(sample(12_000, utilization=0.97))
    assert (first.rate, first.severity, first.circuit, first.shed) == \
        (1.0, Severity.EMERGENCY, CircuitState.OPEN, False)
    # Lag falling but not cleared: still near zero, whatever utilization says.
    for lag in (9_000, 4_000, 1_000):
        held = controller.decide(sample(lag, utilization=0.1))
        assert (held.rate, held.severity) == (1.0, Severity.EMERGENCY)
    # Cleared: 10% of the baseline per interval, half-open, until the baseline is back.
    rates = [controller.decide(sample(999)) for _ in range(11)]
    assert [round(d.rate, 6) for d in rates] == [101, 201, 301, 401, 501, 601, 701, 801, 901,
                                                1000, 1000]
    assert all(d.circuit is CircuitState.HALF_OPEN for d in rates[:9])
    assert (rates[9].severity, rates[9].circuit) == (Severity.NORMAL, CircuitState.CLOSED)


def test_lag_above_critical_is_an_emergency_that_sheds() -> None:
    decision = step(500).decide(sample(20_001, utilization=0.2))
    assert (decision.rate, decision.severity, decision.shed) == (1.0, Severity.EMERGENCY, True)
    assert "critical" in decision.reason


def test_a_relapse_while_restoring_reopens_the_circuit() -> None:
    controller = step(1000)
    controller.decide(sample(25_000))
    controller.decide(sample(0))  # cleared: restoring
    relapse = controller.decide(sample(5_001))
    assert (relapse.rate, relapse.circuit) == (1.0, CircuitState.OPEN)


def test_lag_above_the_scaling_threshold_decreases_by_a_fifth_down_to_the_floor() -> None:
    controller = step(1000)
    decisions = [controller.decide(sample(6_000, utilization=0.5)) for _ in range(40)]
    assert [round(d.rate, 3) for d in decisions[:3]] == [800, 640, 512]
    assert decisions[-1].rate == 1.0  # never below the emergency rate, never zero
    assert all(d.severity is Severity.CRITICAL for d in decisions)


def test_cpu_and_utilization_with_a_building_queue_decrease_by_a_tenth() -> None:
    controller = step(1000)
    assert controller.decide(sample(0, cpu=0.9)).rate == pytest.approx(900)
    assert controller.decide(sample(2_000, utilization=0.95)).rate == pytest.approx(810)
    # A busy limiter with nothing queued downstream is not pressure: restore instead.
    assert controller.decide(sample(10, utilization=0.99)).rate == pytest.approx(910)


def test_a_new_baseline_caps_the_rate_and_restores_toward_it() -> None:
    controller = step(1000)
    controller.set_baseline(300)
    assert controller.decide(sample(0)).rate == 300
    controller.set_baseline(600)
    assert controller.decide(sample(0)).rate == pytest.approx(360)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"critical_lag": 0}, "critical_lag"),
    ({"decrease_factor": 1.5}, "decrease_factor"),
    ({"emergency_rate": math.nan}, "emergency_rate"),
    ({"scaling_threshold": 500}, "backlog_cleared_lag < scaling_threshold"),
])
def test_bad_thresholds_name_the_setting(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        BackpressureThresholds(**kwargs)  # type: ignore[arg-type]


def test_bad_samples_and_baselines_are_refused() -> None:
    with pytest.raises(ValueError, match="lag"):
        PressureSample(lag=-1, utilization=0.1)
    with pytest.raises(ValueError, match="utilization"):
        PressureSample(lag=0, utilization=math.inf)
    with pytest.raises(ValueError, match="baseline_rate"):
        BackpressureController(0.5)


@given(st.lists(st.tuples(st.integers(0, 40_000), st.floats(0, 1.5), st.floats(0, 1)),
                max_size=60))
def test_rate_stays_in_bounds_and_calm_restores_the_baseline(
        samples: list[tuple[int, float, float]]) -> None:
    controller = step(1000)
    for lag, utilization, cpu in samples:
        decision = controller.decide(sample(lag, utilization, cpu))
        assert 1.0 <= decision.rate <= 1000
        assert decision.shed == (lag > 20_000)
    # From anywhere, calm brings the baseline back within 1 / restore_step intervals.
    calm = [controller.decide(sample(0)) for _ in range(10)]
    assert calm[-1].rate == 1000 and calm[-1].circuit is CircuitState.CLOSED


def test_a_successor_restored_from_the_state_carries_on_the_emergency() -> None:
    first = step(1000)
    first.decide(sample(12_000, utilization=0.97))  # emergency
    successor = step(1000)
    successor.restore(first.state())
    # Lag 5,000 is not an emergency by itself: only a controller that remembers holds 1/s.
    assert successor.decide(sample(5_000)).rate == 1.0
    fresh = step(1000)
    assert fresh.decide(sample(5_000)).rate == 1000
    with pytest.raises(ValueError, match="rate"):
        successor.restore({**first.state(), "rate": -1.0})


def test_thresholds_from_settings_and_the_holding_band() -> None:

    assert BackpressureThresholds.from_settings(BackpressureSettings()) == \
        BackpressureThresholds(restore_lag=5_000)  # above the default 5,000
    t = BackpressureThresholds.from_settings(BackpressureSettings(
        max_consumer_lag=4_000, scaling_threshold=2_000, restore_lag=1_500))
    assert (t.critical_lag, t.backlog_cleared_lag, t.effective_restore_lag) == (8_000, 400, 1_500)
    controller = step(1000, t)
    assert controller.decide(sample(2_500)).rate == pytest.approx(800)  # > scaling: x0.8
    held = controller.decide(sample(1_800))  # between restore lag and scaling: hold
    assert held.rate == pytest.approx(800) and held.reason.startswith("holding")
    assert controller.decide(sample(1_400)).rate == pytest.approx(900)  # below: restore
    with pytest.raises(ValueError, match="restore_lag"):
        BackpressureThresholds(restore_lag=6_000)


def test_thresholds_and_settings_share_one_restore_lag_rule() -> None:
    t = BackpressureThresholds(backlog_cleared_lag=100, scaling_threshold=4_000,
                               max_consumer_lag=6_000, critical_lag=12_000)
    s = BackpressureSettings(max_consumer_lag=6_000, scaling_threshold=4_000)
    assert t.effective_restore_lag == s.effective_restore_lag == 3_000


@pytest.mark.parametrize("policy", ["step", "setpoint"])
def test_a_restore_waits_while_the_called_systems_fail_and_resumes_once_they_calm(
        policy: str) -> None:
    controller = BackpressureController(1000, policy=policy)  # type: ignore[arg-type]
    controller.decide(PressureSample(lag=25_000, utilization=0.5))  # emergency: 1/s
    failing = [controller.decide(PressureSample(lag=0, utilization=0.1, error_rate=0.2))
               for _ in range(5)]
    assert all(d.rate == 1.0 for d in failing)  # the guide's ErrorRate < 0.01, or no restore
    assert "error rate 0.200" in failing[-1].reason
    calm = [controller.decide(PressureSample(lag=0, utilization=0.1, error_rate=0.001))
            for _ in range(3)]
    assert calm[-1].rate > calm[0].rate > 1.0
    with pytest.raises(ValueError, match="error_rate"):
        PressureSample(lag=0, utilization=0.1, error_rate=1.5)
