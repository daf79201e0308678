"""The cluster on one worker's page: two real ``faust worker`` processes of an app with a
pipeline behind a distributed limiter; each publishes its summary on the ops topic, and either
worker's ``/backpressure/`` lists both, with which of them owns the limiter."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import faust
import pytest

from faust_backpressure.app import Backpressure
from faust_backpressure.app.views import snapshot
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.testing.broker import free_port
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings
from faust_backpressure.testing.workers import FaustWorker

pytestmark = pytest.mark.kafka

APP = "tests.integration.ops.apps.ops_app"


async def _cluster(http: aiohttp.ClientSession, port: int) -> list[dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{port}/backpressure/") as resp:
        rows: list[dict[str, Any]] = json.loads(await resp.text())["cluster"]
        return rows


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_any_workers_page_shows_every_worker_and_the_limiters_owner(
        guarantee: str, kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    env = {"FBP_APP_ID": unique_name("app"), "FBP_GUARANTEE": guarantee,
           "FBP_SOURCE": unique_name("src"),
           "FBP_SINK": unique_name("sink"), "FBP_DOWN_GROUP": unique_name("billing"),
           "FBP_DOWN_TOPIC": unique_name("priced")}
    await create_topics(kafka_bootstrap, {env["FBP_DOWN_TOPIC"]: 1, env["FBP_SINK"]: 2,
                                          env["FBP_SOURCE"]: 2})
    ports = [free_port(), free_port()]
    workers = [faust_workers(APP, name=f"c{i}", env={**env, "FBP_WEB_PORT": str(port)},
                             web=True) for i, port in enumerate(ports)]
    for worker in workers:
        worker.wait_ready()
    await produce(kafka_bootstrap, env["FBP_SOURCE"], ((b"k%d" % i, b"v") for i in range(40)))
    await consume(kafka_bootstrap, env["FBP_SINK"], until=40, timeout=60)

    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while True:  # the first summaries come within a status interval (5 s)
            try:
                views = [await _cluster(http, port) for port in ports]
            except aiohttp.ClientConnectionError:
                views = []
            fresh = [[r for r in rows if not r["stale"]] for rows in views]
            owners = [r["worker"] for r in (fresh[0] if fresh else [])
                      if r["limiters"].get("ops-api", {}).get("owned")]
            # a summary is a snapshot: the pipeline's totals reach 40 with the first one taken
            # after every record was consumed
            consumed = sum(r["pipelines"].get("orders", {}).get("consumed", 0)
                           for r in (fresh[0] if fresh else []))
            if (len(fresh) == 2 and all(len(rows) == 2 for rows in fresh) and owners
                    and consumed >= 40):
                break
            assert time.monotonic() < deadline, views
            await asyncio.sleep(0.5)
    # both pages list both workers, each with the pipeline, its own page's address, the limiter
    assert [r["worker"] for r in views[0]] == [r["worker"] for r in views[1]]
    assert len({r["worker"] for r in views[0]}) == 2
    for row in views[0]:
        assert "orders" in row["pipelines"] and row["age"] < 15
        assert row["web"].startswith("http://127.0.0.1:") and row["web"].endswith("/ui")
        assert set(row["limiters"]) >= {"ops-api", "ops-free"}
    assert sum(r["pipelines"]["orders"]["consumed"] for r in views[0]) >= 40
    assert len(owners) == 1  # one owner of the limiter's partition


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_an_app_with_only_a_rate_limited_agent_has_the_cluster_view(
        guarantee: str, kafka_bootstrap: str, unique_name: Callable[[str], str],
        tmp_path: Path) -> None:
    """No pipeline, guard or keyed limit: the ops topic (and so the cluster view) is there
    for any app that uses the library (issue 26)."""
    source = unique_name("src")
    await create_topics(kafka_bootstrap, {source: 2})
    app = faust.App(unique_name("app"), datadir=str(tmp_path), processing_guarantee=guarantee,
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}"))
    bp = Backpressure(app, settings=BackpressureSettings())
    seen: list[bytes] = []

    @app.agent(app.topic(source, value_serializer="raw"))
    @bp.rate_limit(TokenBucketRateLimiter(1000, 100))
    async def count(stream: Any) -> None:
        async for value in stream:
            seen.append(value)

    await produce(kafka_bootstrap, source, [(None, b"%d" % i) for i in range(20)])
    async with running_app(app):
        deadline = time.monotonic() + 60
        while not (seen and len(seen) >= 20 and snapshot(bp)["cluster"]):
            assert time.monotonic() < deadline, (len(seen), snapshot(bp)["cluster"])
            await asyncio.sleep(0.2)
        (row,) = snapshot(bp)["cluster"]
    assert row["worker"] == bp.ops_follower.worker and not row["stale"]
    assert bp.rejections.get("ops", {}) == {}
