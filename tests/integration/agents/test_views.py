"""The worker's web pages against a running app: JSON overview and Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import faust
import pytest

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.testing.broker import free_port
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings

pytestmark = pytest.mark.kafka


async def test_overview_and_metrics_pages_show_the_pipeline_at_work(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    source, sink = unique_name("src"), unique_name("sink")
    await create_topics(kafka_bootstrap, {source: 1, sink: 1})
    port = free_port()
    app = faust.App(unique_name("app"), datadir=str(tmp_path),
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}", web_enabled=True,
                                          web_port=port, web_bind="127.0.0.1",
                                          web_host="127.0.0.1"))
    bp = Backpressure(app, settings=BackpressureSettings())

    def check(value: bytes) -> bytes:
        if value.startswith(b"bad"):
            raise ValueError("bad record")
        return value

    bp.pipeline("check", source=source, sink=sink, process=check, max_retries=0,
                limiter=TokenBucketRateLimiter(1000, 1000))
    await produce(kafka_bootstrap, source, [(None, b"ok-1"), (None, b"bad-2"), (None, b"ok-3")])
    async with running_app(app):
        await consume(kafka_bootstrap, sink, until=2, timeout=30)
        async with aiohttp.ClientSession() as http:
            for _ in range(200):  # the web server starts after table recovery, and the
                # source lag counts from the last commit (every 0.5 s): wait for it to be 0
                try:
                    async with http.get(f"http://127.0.0.1:{port}/backpressure/") as resp:
                        overview = json.loads(await resp.text())
                    if overview["pipelines"]["check"]["source_lag"] == 0:
                        break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            async with http.get(f"http://127.0.0.1:{port}/backpressure/metrics") as resp:
                content_type = resp.headers["Content-Type"]
                metrics = await resp.text()
    assert overview["pipelines"]["check"] == {
        "source": source, "dlq": source + "-dlq", "consumed": 3, "produced": 2,
        "filtered": 0, "retries": 0, "dead_lettered": 1, "requeued": 0,
        "limiter": "TokenBucketRateLimiter",
        "paused": False, "paused_by": None, "source_lag": 0, "batch": None}
    assert overview["limiters"]["TokenBucketRateLimiter"]["granted"] == 3
    assert content_type.startswith("text/plain; version=0.0.4")
    labels = f'app="{app.conf.id}",pipeline="check"'
    assert f"faust_backpressure_pipeline_dead_lettered_total{{{labels}}} 1.0" in metrics
    assert f"faust_backpressure_pipeline_produced_total{{{labels}}} 2.0" in metrics
    assert (f'faust_backpressure_pipeline_source_lag{{{labels},topic="{source}"}} 0.0'
            in metrics)
