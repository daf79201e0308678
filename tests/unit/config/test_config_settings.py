from __future__ import annotations

import dataclasses

import pytest

from faust_backpressure.config import BackpressureSettings


def test_defaults() -> None:
    s = BackpressureSettings()
    assert (s.max_consumer_lag, s.scaling_threshold, s.monitoring_interval) == (10_000, 5_000, 5.0)
    assert s.effective_restore_lag == 5_000  # MaxConsumerLag / 2
    assert (s.dlq_topic_suffix, s.shed_topic_suffix, s.on_limit) == ("-dlq", "-shed", "wait")
    assert (s.max_retries, s.retry_backoff) == (3, 0.1)


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        BackpressureSettings().max_retries = 5  # type: ignore[misc]


def test_from_env_parses_typed_values() -> None:
    env = {"FAUST_BP_MAX_CONSUMER_LAG": "20000", "FAUST_BP_MONITORING_INTERVAL": "2.5",
           "FAUST_BP_ON_LIMIT": "shed",
           "FAUST_BP_RESTORE_LAG": "none", "FAUST_BP_DLQ_TOPIC_SUFFIX": ".dead",
           "OTHER": "x"}
    s = BackpressureSettings.from_env(environ=env)
    assert s.max_consumer_lag == 20_000 and s.monitoring_interval == 2.5
    assert s.on_limit == "shed"
    assert s.restore_lag is None and s.effective_restore_lag == 5_000
    assert s.dlq_topic_suffix == ".dead"


def test_from_env_prefix_and_overrides() -> None:
    s = BackpressureSettings.from_env("APP_", environ={"APP_MAX_RETRIES": "7"}, retry_backoff=1.0)
    assert s.max_retries == 7 and s.retry_backoff == 1.0


@pytest.mark.parametrize(("var", "raw", "message"), [
    ("FAUST_BP_MAX_CONSUMER_LAG", "abc",
     "FAUST_BP_MAX_CONSUMER_LAG must be an integer >= 1, got 'abc'"),
    ("FAUST_BP_MAX_CONSUMER_LAG", "0", "FAUST_BP_MAX_CONSUMER_LAG must be an integer >= 1, got 0"),
    ("FAUST_BP_MONITORING_INTERVAL", "soon", "FAUST_BP_MONITORING_INTERVAL must be a finite"),
    ("FAUST_BP_ON_LIMIT", "drop", "FAUST_BP_ON_LIMIT must be one of wait, shed, got 'drop'"),
    ("FAUST_BP_MAX_RETRIES", "-1", "FAUST_BP_MAX_RETRIES must be an integer >= 0, got -1"),
    ("FAUST_BP_SCALING_THRESHOLD", "20000", "FAUST_BP_SCALING_THRESHOLD must be <="),
])
def test_from_env_errors_name_the_variable(var: str, raw: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        BackpressureSettings.from_env(environ={var: raw})
    assert str(info.value).startswith(message)


def test_python_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^retry_backoff must be a finite number >= 0"):
        BackpressureSettings(retry_backoff=-1)
    with pytest.raises(ValueError, match=r"^restore_lag must be <= scaling_threshold"):
        BackpressureSettings(restore_lag=6000)
    with pytest.raises(ValueError, match=r"^max_consumer_lag must be an integer"):
        BackpressureSettings(max_consumer_lag=True)
    assert BackpressureSettings().replace(max_retries=0).max_retries == 0
