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


async def test_a_broken_transaction_stops_the_worker_and_its_events_are_read_again(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    # aiokafka's sender died on an error it did not expect (after a broker outage) and left the
    # transaction in an error state: Faust's commit failed between commit and begin, and every
    # event after failed "Can't send messages while not in transaction", its partition stalled.
    from aiokafka.errors import KafkaError

    from faust_backpressure.faust_seam import TransactionLost

    source, sink, app_id = unique_name("src"), unique_name("sink"), unique_name("app")
    await create_topics(kafka_bootstrap, {source: 1, sink: 1})

    def make_app(datadir: Path) -> faust.App:
        app = faust.App(app_id, datadir=str(datadir), processing_guarantee="exactly_once",
                        **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}",
                                              broker_commit_interval=600))  # commits: ours
        Backpressure(app, settings=BackpressureSettings())
        inputs = app.topic(source, value_type=bytes, value_serializer="raw")
        outputs = app.topic(sink, value_type=bytes, value_serializer="raw")

        @app.agent(inputs)
        async def forward(stream: faust.StreamT[bytes]) -> None:
            async for value in stream:
                await outputs.send(value=value)

        return app

    values = [f"v{i}".encode() for i in range(6)]
    await produce(kafka_bootstrap, source, ((None, v) for v in values[:3]))
    first = make_app(tmp_path / "first")
    async with running_app(first):
        await consume(kafka_bootstrap, sink, until=3, timeout=30)
        assert await first.consumer.commit()
        await produce(kafka_bootstrap, source, ((None, v) for v in values[3:5]))
        await consume(kafka_bootstrap, sink, until=5, timeout=30)  # sent, not committed
        producers = first.producer._transaction_producers  # type: ignore[attr-defined]
        (broken,) = producers.values()
        broken._txn_manager.fatal_error(KafkaError("injected: the sender routine died"))
        await produce(kafka_bootstrap, source, [(None, values[5])])
        manager = first.consumer.transactions
        for _ in range(300):
            if manager.transaction_lost is not None:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.1)
        assert isinstance(manager.transaction_lost, TransactionLost)  # type: ignore[attr-defined]
        assert not await first.consumer.commit()  # nothing more is committed
        assert isinstance(first.crash_reason, TransactionLost)
    committed = (await committed_offsets(kafka_bootstrap, app_id, source)).get(0, 0)
    assert committed == 3

    second = make_app(tmp_path / "second")  # the worker restarted: v3..v5 are read again
    async with running_app(second):
        await consume(kafka_bootstrap, sink, until=8, timeout=30)  # 3 + 2 aborted + 3
        for _ in range(100):
            await second.consumer.commit()
            if (await committed_offsets(kafka_bootstrap, app_id, source)).get(0) == 6:
                break
            await asyncio.sleep(0.2)
        visible = await read_committed(kafka_bootstrap, sink, until=lambda rs: len(rs) >= 6,
                                       settle=2.0)
    assert [r.value for r in visible] == values  # once each: the broken outputs were aborted
