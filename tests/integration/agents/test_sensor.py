"""Users' Faust sensors see rate-limit waits and sheds (``BackpressureSensor`` hooks)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import pytest

from faust_backpressure import Backpressure, BackpressureSensor, BackpressureSettings
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings

pytestmark = pytest.mark.kafka


class Recorder(faust.Sensor):
    """An existing monitor that only adds the one hook it cares about (duck-typed)."""

    def __init__(self) -> None:
        super().__init__()
        self.shed_topics: list[str] = []

    def on_rate_limit_shed(self, agent: str, limiter: str, topic: str, permits: int) -> None:
        self.shed_topics.append(topic)


async def test_sensors_see_waits_and_sheds(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    waited, shed = unique_name("waited"), unique_name("shed")
    await create_topics(kafka_bootstrap, {waited: 1, shed: 1, shed + "-shed": 1})
    app = faust.App(unique_name("app"), datadir=str(tmp_path),
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}"))
    bp = Backpressure(app, settings=BackpressureSettings())
    sensor, recorder = BackpressureSensor(), Recorder()
    app.sensors.add(sensor)
    app.sensors.add(recorder)
    done: list[Any] = []

    @app.agent(app.topic(waited, value_type=bytes, value_serializer="raw"))
    # 20 events at 10/s past a burst of 2: each after the burst waits unless the records come
    # >= 0.1 s apart (at 50/s a loaded run's fetches came slowly enough that only 3 waited)
    @bp.rate_limit(TokenBucketRateLimiter(10, 2))
    async def slow(stream: Any) -> None:
        async for value in stream:
            done.append(value)

    @app.agent(app.topic(shed, value_type=bytes, value_serializer="raw"))
    @bp.rate_limit(TokenBucketRateLimiter(1, 3), on_limit="shed")
    async def shedding(stream: Any) -> None:
        async for value in stream:
            done.append(value)

    await produce(kafka_bootstrap, waited, [(None, b"w")] * 20)
    await produce(kafka_bootstrap, shed, [(None, b"s")] * 12)
    async with running_app(app):
        await consume(kafka_bootstrap, shed + "-shed", until=6, timeout=30)
        for _ in range(100):
            if sum(1 for v in done if v == b"w") == 20:
                break
            await asyncio.sleep(0.1)
    assert sum(1 for v in done if v == b"w") == 20
    key = next(k for k in sensor.waits if k[0].endswith("slow"))
    assert sensor.waits[key] >= 5 and sensor.wait_seconds[key] > 0.05
    shed_key = next(k for k in sensor.shed if k[0].endswith("shedding"))
    assert sensor.shed[shed_key] >= 6
    assert recorder.shed_topics and set(recorder.shed_topics) == {shed + "-shed"}
    assert sensor.asdict()["shed"][0]["value"] == sensor.shed[shed_key]
