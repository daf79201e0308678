"""The limiter owner's store records the offset of each acknowledged state write, as Faust's
table path does, so an owner keeping its partition through a rebalance or a restart has nothing
to restore. It re-read its own writes from offset 0 at every rebalance before, and a chaos run
once stalled on such a read that never got a record (docs/reliability.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import faust
import pytest
from faust.types import TP

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.tables.service import find_channel
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import consume, create_topics, end_offsets, produce
from faust_backpressure.testing.settings import fast_faust_settings

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_the_owner_persists_the_offset_of_its_last_acknowledged_write(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
        guarantee: str) -> None:
    source, sink, name = unique_name("src"), unique_name("sink"), unique_name("app")
    await create_topics(kafka_bootstrap, {source: 2, sink: 2})
    limiter_id = unique_name("api")
    ids = [b"id-%04d" % i for i in range(300)]
    await produce(kafka_bootstrap, source, ((i, i) for i in ids))

    def make_app() -> tuple[faust.App, Backpressure]:
        app = faust.App(name, datadir=str(tmp_path), processing_guarantee=guarantee,
                        store="rocksdict://",
                        **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}"))
        bp = Backpressure(app, settings=BackpressureSettings())
        src = app.topic(source, key_type=bytes, value_type=bytes, key_serializer="raw",
                        value_serializer="raw")
        dst = app.topic(sink, key_type=bytes, value_type=bytes, key_serializer="raw",
                        value_serializer="raw")

        @app.agent(src)
        @bp.rate_limit(limiter_id, tokens_per_second=200, burst_capacity=400)
        async def forward(stream: faust.StreamT[bytes]) -> None:
            async for key, value in stream.items():
                await dst.send(key=key, value=value)

        return app, bp

    app, _ = make_app()
    async with running_app(app):
        records = await consume(kafka_bootstrap, sink, until=len(ids), timeout=60,
                                isolation_level="read_committed")
        channel = find_channel(app)
        assert channel is not None
        tp = TP(channel.changelog_topic_name, channel._partition(limiter_id))
        store = channel.table.data
        deadline = asyncio.get_running_loop().time() + 20
        while True:  # the last grant's write may still be on its way: wait for it
            end = (await end_offsets(kafka_bootstrap, tp.topic))[tp.partition]
            persisted = store.persisted_offset(tp)  # type: ignore[attr-defined]
            if end > 1 and persisted == end - 1:
                break
            assert asyncio.get_running_loop().time() < deadline, (persisted, end)  # type: ignore[attr-defined]
            await asyncio.sleep(0.2)
    assert sorted(r.value for r in records) == ids

    # The same worker again, on its own state: its partition's restore starts at the end.
    again, _ = make_app()
    async with running_app(again):
        recovery = again.tables.recovery  # type: ignore[attr-defined]
        await recovery.completed.wait()
        assert recovery.active_offsets[tp] == recovery.active_highwaters[tp] == persisted
