"""The set-point policy on simulated plants (virtual clock): a step in the downstream's
capacity, a downstream that stops, one that comes back; the step policy on the same plant.

The plant is issue 12's pipeline: a limiter with a base rate of 300/s in front of a downstream
of 100/s, thresholds scaling 1,000 / max 2,000 (critical 4,000, cleared 200, set point 500),
sampled every second, the upstream always saturated (300/s offered). Commits: continuous, or
chunked every 2.8 s as Faust's default ``broker_commit_interval`` (the lag then saw-tooths).
"""

from __future__ import annotations

import json

import pytest

from faust_backpressure.config import BackpressureSettings
from faust_backpressure.control.loop import WorkerSample
from faust_backpressure.control.policy import (
    BackpressureController,
    BackpressureSeverity,
    BackpressureThresholds,
    CircuitState,
    DownstreamRateEstimator,
    PressureSample,
    SetPointTuning,
)
from faust_backpressure.testing.plant import Run, simulate

THRESHOLDS = BackpressureThresholds.from_settings(
    BackpressureSettings(scaling_threshold=1_000, max_consumer_lag=2_000))
BASE = 300.0
COMMITS = pytest.mark.parametrize("commit_interval", [0.0, 2.8])


def controller(policy: str = "setpoint") -> BackpressureController:
    return BackpressureController(BASE, THRESHOLDS, policy=policy,  # type: ignore[arg-type]
                                  interval=1.0)


def capacity_step(t: float) -> float:
    return 100.0 if t < 60 else 50.0 if t < 120 else 100.0


def run_capacity_step(policy: str, commit_interval: float) -> Run:
    return simulate(controller(policy), offered=lambda t: 300.0, capacity=capacity_step,
                    duration=180, commit_interval=commit_interval, utilization_dips=0.35)


def test_defaults_hold_half_the_scaling_threshold() -> None:
    assert THRESHOLDS.effective_set_point_lag == 500
    assert BackpressureThresholds().effective_set_point_lag == 2_500
    assert BackpressureController(100).policy == "setpoint"
    with pytest.raises(ValueError, match="set_point_lag"):
        BackpressureThresholds(set_point_lag=1_000)  # not above backlog_cleared_lag
    with pytest.raises(ValueError, match="policy"):
        BackpressureController(100, policy="pid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deadband"):
        SetPointTuning(deadband=2)


@COMMITS
def test_a_step_in_downstream_capacity_settles_at_each_capacity(commit_interval: float) -> None:
    run = run_capacity_step("setpoint", commit_interval)
    assert run.between(5, 180).busy_share() >= 0.95
    assert run.peak_lag() < THRESHOLDS.max_consumer_lag
    assert BackpressureSeverity.EMERGENCY not in run.severities()
    for start, end, cap in ((30, 60, 100), (90, 120, 50), (150, 180, 100)):
        steady = run.between(start, end)
        low, high = steady.rate_band()
        assert 0.75 * cap <= low and high <= 1.25 * cap, (start, low, high)
        assert steady.steps_per_minute() <= 12, (start, steady.steps_per_minute())
        assert all(i.decision.downstream_rate is not None for i in steady.intervals)


@COMMITS
def test_the_step_policy_on_the_same_plant_never_rests(commit_interval: float) -> None:
    run = run_capacity_step("step", commit_interval)
    setpoint = run_capacity_step("setpoint", commit_interval)
    for start, end in ((30, 60), (90, 120), (150, 180)):
        assert run.between(start, end).steps_per_minute() >= 40
        assert run.between(start, end).steps_per_minute() >= \
            3 * setpoint.between(start, end).steps_per_minute()


def stop_and_back(back: float, commit_interval: float, policy: str = "setpoint") -> Run:
    return simulate(controller(policy), offered=lambda t: 300.0,
                    capacity=lambda t: 100.0 if t < 60 else 0.0 if t < 120 else back,
                    duration=200, commit_interval=commit_interval)


@COMMITS
def test_a_downstream_that_stops_opens_the_circuit_before_the_lag_grows(
        commit_interval: float) -> None:
    stopped = stop_and_back(400.0, commit_interval).between(60, 120)
    assert stopped.peak_lag() < THRESHOLDS.max_consumer_lag < THRESHOLDS.critical_lag
    emergency = stopped.first(lambda i: i.decision.severity is BackpressureSeverity.EMERGENCY)
    assert emergency is not None and emergency.t <= 60 + 10
    assert "stalled" in emergency.decision.reason
    assert emergency.decision.circuit is CircuitState.OPEN
    after = stopped.between(emergency.t, 120)
    assert all(i.decision.rate == THRESHOLDS.emergency_rate for i in after.intervals)
    # The rate estimate decays toward 0: how far behind in time grows without bound.
    assert all(i.decision.lag_seconds is not None and i.decision.lag_seconds > 100
               for i in after.intervals[-10:])


@COMMITS
def test_a_downstream_that_comes_back_gets_the_base_rate_within_10_intervals(
        commit_interval: float) -> None:
    back = stop_and_back(400.0, commit_interval).between(120, 200)
    restored = back.first(lambda i: i.decision.rate >= BASE)
    assert restored is not None and restored.t <= 120 + 10
    assert all(i.decision.rate == BASE for i in back.between(restored.t, 200).intervals)
    assert back.between(restored.t, 200).intervals[-1].decision.circuit is CircuitState.CLOSED


@COMMITS
def test_a_downstream_that_comes_back_slower_than_the_base_is_held_at_its_pace(
        commit_interval: float) -> None:
    run = stop_and_back(100.0, commit_interval)
    steady = run.between(170, 200)
    low, high = steady.rate_band()
    assert low >= 75 and high <= 125
    assert steady.steps_per_minute() <= 12
    assert run.between(120, 200).peak_lag() < THRESHOLDS.max_consumer_lag
    assert steady.intervals[-1].decision.circuit is CircuitState.CLOSED


def test_backlog_cleared_restores_the_base_at_least_as_fast_as_the_guide() -> None:
    # The pressure ends (no more input): from 100/s, +10% of the base per interval.
    run = simulate(controller(), offered=lambda t: 300.0 if t < 30 else 0.0,
                   capacity=lambda t: 100.0, duration=150, commit_interval=2.8)
    end = run.first(lambda i: i.t > 30 and i.upstream_backlog <= 0)
    assert end is not None
    restored = run.between(end.t, 150).first(lambda i: i.decision.rate >= BASE)
    assert restored is not None and restored.t <= end.t + 10


def test_without_a_processed_count_the_rails_only() -> None:
    c = controller()
    assert c.decide(PressureSample(lag=600, utilization=1.0)).rate == BASE  # hold
    assert c.decide(PressureSample(lag=1_500, utilization=1.0)).rate == pytest.approx(240)
    assert c.decide(PressureSample(lag=100, utilization=1.0)).rate == pytest.approx(270)
    assert c.decide(PressureSample(lag=100, utilization=1.0)).downstream_rate is None


def test_the_rate_estimate_spans_chunked_commits_and_restarts_on_a_reset() -> None:
    est = DownstreamRateEstimator(window=10.0, smoothing=1.0)
    assert est.update(0.0, 0) is None
    for second in range(1, 30):  # 280 records committed every 2.8 s (sampled each second)
        rate = est.update(float(second), int(second // 2.8) * 280)
    assert rate == pytest.approx(100, rel=0.25)
    assert est.update(30.0, 10) is None  # the count went backwards: a reset group
    assert est.update(31.0, 60) == pytest.approx(50)


def test_lag_seconds_and_max_lag_seconds() -> None:
    t = BackpressureThresholds(scaling_threshold=1_000, max_consumer_lag=2_000,
                               critical_lag=4_000, backlog_cleared_lag=200,
                               max_lag_seconds=4.0)
    c = BackpressureController(BASE, t, interval=1.0)
    c.decide(PressureSample(lag=600, utilization=1.0, processed=0, at=0.0))
    d = c.decide(PressureSample(lag=600, utilization=1.0, processed=100, at=1.0))
    assert d.downstream_rate == pytest.approx(100) and d.lag_seconds == pytest.approx(6.0)
    # 6 s > 4 s: at least the guide's cut, and the set point becomes 2 s x 100/s = 200.
    assert d.severity is BackpressureSeverity.CRITICAL and d.rate <= 0.8 * BASE
    assert "set point 200" in d.reason
    step = BackpressureController(BASE, t, policy="step", interval=1.0)
    step.decide(PressureSample(lag=600, utilization=0.5, processed=0, at=0.0))
    cut = step.decide(PressureSample(lag=600, utilization=0.5, processed=100, at=1.0))
    assert cut.rate == pytest.approx(0.8 * BASE) and "6.0 s > 4.0 s" in cut.reason


def test_worker_samples_carry_the_processed_count_and_old_events_still_decode() -> None:
    new = WorkerSample("l", "w", 1.0, lag=5, utilization=0.5, cpu=0.1, processed=42)
    assert WorkerSample.decode(new.encode()) == new
    old = json.dumps({"limiter": "l", "worker": "w", "at": 1.0, "lag": 5,
                      "utilization": 0.5, "cpu": 0.1}).encode()
    assert WorkerSample.decode(old).processed is None
    assert "processed" not in json.loads(
        WorkerSample("l", "w", 1.0, lag=5, utilization=0.5, cpu=0.1).encode())
