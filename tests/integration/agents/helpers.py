"""Helpers shared by the agent integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
from aiokafka import ConsumerRecord

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.testing.kafka_io import committed_offsets, consume, create_topics
from faust_backpressure.testing.settings import fast_faust_settings

Record = ConsumerRecord[bytes, bytes]


def hdr(record: Record) -> dict[str, bytes]:
    return dict(record.headers)


async def read_committed(bootstrap: str, topic: str, *, until: Callable[[list[Record]], bool],
                         timeout: float = 60.0, settle: float = 0.0) -> list[Record]:
    """``kafka_io.consume`` of committed transactional records only."""
    return await consume(bootstrap, topic, until=until, timeout=timeout, settle=settle,
                         isolation_level="read_committed")


def guarded_app(bootstrap: str, app_id: str, datadir: Path, guarantee: str,
                **settings: Any) -> faust.App:
    """An in-process Faust app with faust-backpressure installed (its seam patches on)."""
    app = faust.App(app_id, datadir=str(datadir), processing_guarantee=guarantee,
                    **fast_faust_settings(broker=f"kafka://{bootstrap}", **settings))
    Backpressure(app, settings=BackpressureSettings())
    return app


async def table_app(bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
                    guarantee: str, table_name: str, *,
                    counting: bool) -> tuple[faust.App, Any, str, str]:
    """An app with a one-partition table and an agent reading a one-partition source, which
    counts each record into the table's ``n`` (``counting``) or only reads; the changelog is
    created. Returns the app, the table, the changelog's and the source's names."""
    source = unique_name("src")
    await create_topics(bootstrap, {source: 1})
    app = guarded_app(bootstrap, unique_name("app"), tmp_path, guarantee, topic_partitions=1)
    table = app.Table(table_name, default=int, partitions=1)
    topic = app.topic(source, value_type=bytes, value_serializer="raw")

    @app.agent(topic)
    async def read(stream: faust.StreamT[bytes]) -> None:
        async for _ in stream:
            if counting:
                table["n"] += 1

    changelog = table.changelog_topic.get_topic_name()
    await create_topics(bootstrap, {changelog: 1})
    return app, table, changelog, source


async def committed_to_the_end(bootstrap: str, group: str, topic: str,
                               total: int) -> dict[int, int]:
    """The group's committed offsets on ``topic`` once they cover ``total`` records (or
    what they are after 30 s)."""
    offsets: dict[int, int] = {}
    for _ in range(150):
        offsets = await committed_offsets(bootstrap, group, topic)
        if sum(offsets.values()) >= total:
            break
        await asyncio.sleep(0.2)
    return offsets
