"""exactly_once: an event fetched before the last revocation writes nothing and commits nothing.

Its partition is read again from the committed offset (by this worker or the next owner), so
an output it sent would be committed twice. The revocation is stood in for by what its handler
leaves behind (``revoked_generation``), set while an event runs; the rest is real: Faust's
consumer, the transaction manager, the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import pytest

from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import (
    committed_offsets,
    create_topics,
    produce,
    read_to_end,
)
from tests.integration.agents.helpers import guarded_app

pytestmark = pytest.mark.kafka


async def test_outputs_of_an_event_fetched_before_a_revocation_are_dropped(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    source, sink = unique_name("src"), unique_name("out")
    await create_topics(kafka_bootstrap, {source: 1, sink: 1})
    await produce(kafka_bootstrap, source, [(None, b"before"), (None, b"stale"), (None, b"after")])
    app = guarded_app(kafka_bootstrap, unique_name("app"), tmp_path, "exactly_once")
    out = app.topic(sink, value_type=bytes, value_serializer="raw")
    seen: list[bytes] = []

    @app.agent(app.topic(source, value_type=bytes, value_serializer="raw"))
    async def forward(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            if event.value == b"stale":  # a revocation's handler finished while this ran
                consumer: Any = app.consumer
                consumer.revoked_generation = event.message.generation_id
            await out.send(value=event.value)
            seen.append(event.value)

    async with running_app(app):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while len(seen) < 3:
            assert loop.time() < deadline, seen
            await asyncio.sleep(0.1)
        while not (committed := await committed_offsets(kafka_bootstrap, app.conf.id, source)):
            assert loop.time() < deadline, "nothing committed"
            await asyncio.sleep(0.1)
        await app.consumer.commit()  # one more, after every event was done
        committed = await committed_offsets(kafka_bootstrap, app.conf.id, source)
        manager: Any = app.consumer.transactions
        dropped = manager.dropped_outputs
    written = [r.value for r in await read_to_end(kafka_bootstrap, sink,
                                                  isolation_level="read_committed")]
    assert written == [b"before"]  # "stale" and what followed it in its generation: dropped
    assert committed.get(0) == 1  # nothing past the first stale event
    assert dropped == 2
