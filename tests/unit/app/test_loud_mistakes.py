"""Issue 14: mistakes that used to pass in silence fail loudly or are named."""

from __future__ import annotations

import warnings
from typing import Any

import faust
import pytest

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.config.env_check import UnknownSettingWarning
from faust_backpressure.limiters import TokenBucketRateLimiter


def _bp() -> tuple[faust.App, Backpressure]:
    app = faust.App("loud-mistakes", broker="kafka://localhost:1")
    return app, Backpressure(app, settings=BackpressureSettings())


def test_rate_limit_above_app_agent_is_an_error() -> None:
    app, bp = _bp()
    topic = app.topic("t")
    with pytest.raises(TypeError, match=r"above @app.agent on .*put it under @app.agent"):
        @bp.rate_limit(TokenBucketRateLimiter(10, 10))
        @app.agent(topic)
        async def process(stream: Any) -> None:
            async for _ in stream:
                pass


def test_rate_limit_under_app_agent_is_fine() -> None:
    app, bp = _bp()

    @app.agent(app.topic("t"))
    @bp.rate_limit(TokenBucketRateLimiter(10, 10))
    async def process(stream: Any) -> None:
        async for _ in stream:
            pass


def test_rate_limit_per_key_above_app_agent_is_an_error() -> None:
    app, bp = _bp()
    limit = bp.rate_limit_per_key("per-customer", tokens_per_second=10, partitions=1)
    with pytest.raises(TypeError, match=r"@rate_limit_per_key\('per-customer'\) is above "
                                        r"@app.agent on .*put it under @app.agent"):
        @limit
        @app.agent(app.topic("t"))
        async def process(stream: Any) -> None:
            async for _ in stream:
                pass


def test_rate_limit_per_key_under_app_agent_is_fine() -> None:
    app, bp = _bp()
    limit = bp.rate_limit_per_key("per-customer", tokens_per_second=10, partitions=1)

    @app.agent(app.topic("t"))
    @limit
    async def process(stream: Any) -> None:
        async for _ in stream:
            pass

    assert limit.agent_name.endswith("process")


@pytest.mark.parametrize("given", [{"tokens_per_second": 100},
                                   {"burst_capacity": 10}])
def test_pipeline_rate_without_limiter_is_an_error(given: dict[str, float]) -> None:
    _, bp = _bp()
    with pytest.raises(ValueError, match="without limiter="):
        bp.pipeline("p", source="src", sink="out", process=lambda v: v, **given)
    assert "p" not in bp.pipelines


def test_a_misspelled_variable_names_the_closest_setting() -> None:
    env = {"FAUST_BP_MAX_CONSUMER_LAGG": "5", "FAUST_BP_SCALING_TRESHOLD": "3"}
    with pytest.warns(UnknownSettingWarning) as caught:
        settings = BackpressureSettings.from_env(environ=env)
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "FAUST_BP_MAX_CONSUMER_LAGG is not a faust-backpressure setting and is ignored; "
        "did you mean FAUST_BP_MAX_CONSUMER_LAG?",
        "FAUST_BP_SCALING_TRESHOLD is not a faust-backpressure setting and is ignored; "
        "did you mean FAUST_BP_SCALING_THRESHOLD?"]
    assert settings == BackpressureSettings()


def test_known_settings_and_tooling_variables_do_not_warn() -> None:
    env = {"FAUST_BP_MAX_CONSUMER_LAG": "20000", "FAUST_BP_KAFKA_HOME": "/x",
           "FAUST_BP_KAFKA_VERSION": "4.1.1", "OTHER": "1"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert BackpressureSettings.from_env(environ=env).max_consumer_lag == 20000


def test_a_guards_quota_probe_after_reaches_its_learner_and_is_checked() -> None:
    """``quota_probe_after`` trades 429s for finding a raised quota sooner (docs/downstream.md);
    both learners take it, shared and local, and a bad value names the setting."""
    _, bp = _bp()
    shared: Any = bp.downstream("payments", quota_probe_after=5.0).quota
    local: Any = bp.downstream("search", quota_probe_after=0.0, share_quota=False).quota
    assert shared.learner.probe_after == 5.0 and local.learner.probe_after == 0.0
    with pytest.raises(ValueError, match="quota_probe_after"):
        bp.downstream("ledger", quota_probe_after=-1.0)
