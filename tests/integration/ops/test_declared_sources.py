"""Issue 14: a pipeline's source topic is declared with the app's partitions before the
consumer subscribes, so a fresh source is processed at once (not after a 5-minute rebalance)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import faust
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import consume, produce
from faust_backpressure.testing.settings import fast_faust_settings

pytestmark = pytest.mark.kafka


async def _partitions(bootstrap: str, topic: str, wait: float) -> int:
    """Partitions of ``topic`` once it exists (0 if it does not within ``wait`` s); asks the
    admin API, which never auto-creates a topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + wait
        while True:
            if topic in await admin.list_topics():
                (desc,) = await admin.describe_topics([topic])
                if desc["partitions"]:
                    return len(desc["partitions"])
            if time.monotonic() > deadline:
                return 0
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def test_a_fresh_pipeline_source_is_declared_with_the_apps_partitions_and_processed(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    source, sink = unique_name("src"), unique_name("sink")
    app = faust.App(unique_name("app"), datadir=str(tmp_path),
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}",
                                          topic_partitions=3))
    bp = Backpressure(app, settings=BackpressureSettings())
    bp.pipeline("p", source=source, sink=sink, process=lambda v: v,
                limiter=TokenBucketRateLimiter(10_000, 1_000), on_limit="shed")
    async with running_app(app):
        # Nothing was created before the app started: the worker must declare the source.
        assert await _partitions(kafka_bootstrap, source, wait=20) == 3
        await produce(kafka_bootstrap, source, ((b"k%d" % i, b"v%d" % i) for i in range(60)))
        out = await consume(kafka_bootstrap, sink, until=60, timeout=30)
        assert await _partitions(kafka_bootstrap, source + "-shed", wait=10) == 3
    assert sorted(r.value for r in out) == sorted(b"v%d" % i for i in range(60))
