"""A worker's breaker hears from other workers, in an in-process app on the real broker: that
the system answers again (a signed ``recovered/<name>`` record on the ops topic: it probes at
once), or that it fails (``failing/<name>``: it opens at once, before any call of its own
failed); a forged or stale record is counted and changes nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import pytest

from faust_backpressure.agents.slow_down import DependencyUnavailable
from faust_backpressure.app import Backpressure
from faust_backpressure.app.downstream_ops import (
    FailingRecord,
    RecoveredRecord,
    failing_key,
    recovered_key,
)
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings
from faust_backpressure.wire.signing import BAD_SIGNATURE
from faust_backpressure.wire.topics import ops_topic

pytestmark = pytest.mark.kafka

SECRET = "s3cret"


async def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.05)


async def _app_with_a_guard(guarantee: str, bootstrap: str, unique_name: Callable[[str], str],
                            tmp_path: Path, **guard: Any) -> tuple[faust.App, Backpressure, Any]:
    """An app whose pipeline calls the guard ``api`` (open for 10 minutes once opened)."""
    source, sink, dlq = unique_name("src"), unique_name("sink"), unique_name("dlq")
    await create_topics(bootstrap, {source: 1, sink: 1, dlq: 1})
    app = faust.App(unique_name("app"), datadir=str(tmp_path),
                    processing_guarantee=guarantee,
                    **fast_faust_settings(broker=f"kafka://{bootstrap}"))
    bp = Backpressure(app, settings=BackpressureSettings(secret=SECRET))
    api = bp.downstream("api", wait_in_open=600.0, **guard)
    bp.pipeline("calls", source=source, sink=sink, dlq=dlq, process=lambda v: v,
                downstream=api)
    return app, bp, api


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_news_of_a_recovery_elsewhere_makes_an_open_breaker_probe_at_once(
        guarantee: str, kafka_bootstrap: str, unique_name: Callable[[str], str],
        tmp_path: Path) -> None:
    # open for 10 minutes unless told: only the news can make it probe within the test
    app, bp, api = await _app_with_a_guard(guarantee, kafka_bootstrap, unique_name, tmp_path,
                                           minimum_calls=1)
    topic = ops_topic(str(app.conf.id))
    async with running_app(app):
        await eventually(lambda: bp.ops_follower is not None)
        with pytest.raises(DependencyUnavailable):
            async with api.call():
                raise DependencyUnavailable("HTTP 503")
        assert api.state.value == "open"
        forged = {"type": "recovered", "dependency": "api", "by": "thief", "at": time.time()}
        await produce(kafka_bootstrap, topic, [(recovered_key("api"),
                                                json.dumps(forged).encode())])
        await eventually(lambda: bp.rejections.get("ops", {}).get(BAD_SIGNATURE, 0) >= 1)
        assert api.state.value == "open" and api.outcomes["probed_on_news"] == 0
        news = RecoveredRecord("api", "worker-b", time.time())
        await produce(kafka_bootstrap, topic, [(recovered_key("api"),
                                                news.encode(SECRET.encode()))])
        await eventually(lambda: api.state.value == "half_open")
    assert api.outcomes["probed_on_news"] == 1
    assert bp.rejections["ops"] == {BAD_SIGNATURE: 1}


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_news_of_failures_elsewhere_opens_a_closed_breaker_at_once(
        guarantee: str, kafka_bootstrap: str, unique_name: Callable[[str], str],
        tmp_path: Path) -> None:
    # opened, it stays open for the test
    app, bp, api = await _app_with_a_guard(guarantee, kafka_bootstrap, unique_name, tmp_path)
    topic = ops_topic(str(app.conf.id))
    async with running_app(app):
        await eventually(lambda: bp.ops_follower is not None)
        now = time.time()
        forged = {"type": "failing", "dependency": "api", "until": now + 60, "by": "thief",
                  "at": now}
        stale = FailingRecord("api", now - 5.0, "worker-b", now - 6.0)  # its end is past
        await produce(kafka_bootstrap, topic, [
            (failing_key("api"), json.dumps(forged).encode()),
            (failing_key("api"), stale.encode(SECRET.encode()))])
        await eventually(lambda: api.outcomes["stale_news"] >= 1)
        assert bp.rejections.get("ops", {}).get(BAD_SIGNATURE, 0) == 1
        assert api.state.value == "closed" and api.outcomes["opened_on_news"] == 0
        news = FailingRecord("api", time.time() + 1.25, "worker-b", time.time())
        await produce(kafka_bootstrap, topic, [(failing_key("api"),
                                                news.encode(SECRET.encode()))])
        await eventually(lambda: api.state.value == "open")
        assert api.breaker.failing and api.outcomes["opened_on_news"] == 1
    assert bp.rejections["ops"] == {BAD_SIGNATURE: 1}
