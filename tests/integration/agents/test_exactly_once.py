"""exactly_once: a transaction's outputs are exactly those of the input offsets it commits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import faust
import pytest

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import (
    committed_offsets,
    consume,
    create_topics,
    produce,
)
from faust_backpressure.testing.settings import fast_faust_settings

from .helpers import read_committed

pytestmark = pytest.mark.kafka


async def test_a_commit_never_includes_outputs_of_an_event_it_does_not_commit(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    # Faust takes the offsets to commit, then commits the open transaction, while agents keep
    # running: an event that has sent its output but is not finished (not acked) had its
    # output committed without its offset, so after a crash it ran again: a duplicate.
    source, sink = unique_name("src"), unique_name("sink")
    await create_topics(kafka_bootstrap, {source: 1, sink: 1})
    app = faust.App(unique_name("app"), datadir=str(tmp_path),
                    processing_guarantee="exactly_once",
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}",
                                          broker_commit_interval=600))  # commits: ours only
    Backpressure(app, settings=BackpressureSettings())
    inputs = app.topic(source, value_type=bytes, value_serializer="raw")
    outputs = app.topic(sink, value_type=bytes, value_serializer="raw")
    release = asyncio.Event()

    @app.agent(inputs)
    async def forward(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            await outputs.send(value=value)
            if value == b"held":
                await release.wait()  # output sent, event not finished

    values = [b"v0", b"v1", b"held", b"v3", b"v4"]
    await produce(kafka_bootstrap, source, ((None, v) for v in values))
    async with running_app(app):
        await consume(kafka_bootstrap, sink, until=3, timeout=30)  # v0, v1, held: sent
        commit = asyncio.ensure_future(app.consumer.commit())
        asyncio.get_running_loop().call_later(1.0, release.set)
        await asyncio.wait_for(commit, timeout=30)
        # Commit markers are written after the commit returns: read once they are in.
        visible = await read_committed(kafka_bootstrap, sink, until=lambda rs: True, settle=2.0)
        committed = (await committed_offsets(kafka_bootstrap, app.conf.id, source)).get(0, 0)
    assert committed >= 3  # the commit waited for the held event to finish
    assert [r.value for r in visible] == values[:committed]
