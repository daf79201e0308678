"""Offsets are never committed past a record that was not processed (issue 9, defect 1).

A fetch from a stale position (Faust seeks to the committed offsets after a rebalance while a
fetch is in flight, faust-streaming #312) shows up as a jump in a partition's offsets, and
Faust commits past a jump as if it were transaction markers. The test makes the same jump by
moving the fetch position forward under Faust and checks that every record is still processed
and that the committed offset never passed an unprocessed one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import TopicPartition
from faust.types import TP

from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import committed_offsets, create_topics, produce
from tests.integration.agents.helpers import guarded_app

pytestmark = pytest.mark.kafka

RECORDS = 3000
JUMP_AT, JUMP_TO = 100, 1500


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_jump_in_offsets_is_re_read_not_committed_past(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
        guarantee: str) -> None:
    source = unique_name("src")
    await create_topics(kafka_bootstrap, {source: 1})
    await produce(kafka_bootstrap, source, ((None, b"%d" % i) for i in range(RECORDS)))
    app = guarded_app(kafka_bootstrap, unique_name("app"), tmp_path, guarantee,
                      broker_max_poll_records=20)
    topic = app.topic(source, value_type=bytes, value_serializer="raw")
    processed: list[int] = []
    unprocessed_commits: list[tuple[int, int]] = []

    @app.agent(topic)
    async def consume_all(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            offset = event.message.offset
            processed.append(offset)
            if offset == JUMP_AT and JUMP_TO not in processed:
                # The fetch position moves forward under Faust: a stale fetch's effect.
                aiokafka_consumer = app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
                aiokafka_consumer.seek(TopicPartition(source, 0), JUMP_TO)

    async def committed() -> int:
        return (await committed_offsets(kafka_bootstrap, app.conf.id, source)).get(0, 0)

    async with running_app(app):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while (position := await committed()) < RECORDS and loop.time() < deadline:
            first_missing = min(set(range(RECORDS)) - set(processed), default=RECORDS)
            if position > first_missing:
                unprocessed_commits.append((position, first_missing))
            await asyncio.sleep(0.2)
        seen = set(processed)
    missing = sorted(set(range(RECORDS)) - seen)
    assert not missing, f"{len(missing)} offsets never processed, from {missing[0]}"
    assert not unprocessed_commits, f"committed past unprocessed offsets: {unprocessed_commits[:3]}"
    assert position == RECORDS
    guard = app.consumer.offset_guard  # type: ignore[attr-defined]
    assert guard.rereads >= 1  # the jump was seen and re-read


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_rebalance_resumes_a_stream_partition_only_after_seeking_it(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
        guarantee: str) -> None:
    # Faust's recovery resumes stream partitions and then seeks them (faust-streaming #216):
    # a fetch in between read from where the last generation stopped (an exactly_once
    # duplicate in the chaos runs). Then it clears the stream queues and resumes the flow:
    # records fetched before that clear were lost to the guard (a stall). Here the same calls,
    # in Faust's order, on a real consumer: the partition is fetched only once the flow is.
    source = unique_name("src")
    await create_topics(kafka_bootstrap, {source: 1})
    app = guarded_app(kafka_bootstrap, unique_name("app"), tmp_path, guarantee)
    topic = app.topic(source, value_type=bytes, value_serializer="raw")

    @app.agent(topic)
    async def consume_all(stream: faust.StreamT[bytes]) -> None:
        async for _ in stream:
            pass

    async with running_app(app):
        consumer = app.consumer
        tp = TP(source, 0)
        await _assigned(app, tp)
        active: Callable[[], set[TP]] = consumer._get_active_partitions  # type: ignore[attr-defined]
        consumer.pause_partitions([tp])
        app.rebalancing = True  # what Faust's rebalance sets until recovery ends
        try:
            consumer.resume_partitions([tp])
            assert tp not in active()  # not before the seek
            await consumer.perform_seek()
            assert tp not in active()  # not before the stream queues are cleared
            app.flow_control.resume()
            consumer.resume_flow()
            assert tp in active()
        finally:
            app.rebalancing = False


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_records_fetched_before_the_recovery_clears_the_queues_are_not_lost(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
        guarantee: str) -> None:
    """The end of Faust's recovery, in its order on a real consumer: seek the stream partitions,
    then ``flow_control.resume()`` (which clears every stream queue), then resume the flow,
    the flow being active already. Records fetched between the seek and the clear waited in
    the queue behind an event in progress and were cleared, the guard already past them: never
    processed, the commit stuck before them (the downstream SIGKILL test's CI stalls)."""
    source = unique_name("src")
    await create_topics(kafka_bootstrap, {source: 1})
    app = guarded_app(kafka_bootstrap, unique_name("app"), tmp_path, guarantee)
    topic = app.topic(source, value_type=bytes, value_serializer="raw")
    seen: set[bytes] = set()
    in_progress, go_on = asyncio.Event(), asyncio.Event()

    @app.agent(topic)
    async def consume_all(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            seen.add(value)
            in_progress.set()
            await go_on.wait()  # the first event holds the rest in the queue

    async with running_app(app):
        consumer: Any = app.consumer
        tp = TP(source, 0)
        await _assigned(app, tp)
        loop = asyncio.get_running_loop()
        consumer.pause_partitions([tp])
        app.rebalancing = True
        try:
            await produce(kafka_bootstrap, source, ((None, b"%d" % i) for i in range(20)))
            consumer.resume_partitions([tp])
            await consumer.perform_seek()
            # without the fix the partition is fetched now: one event in progress, the rest
            # queued behind it. Either that, or two fetches since the seek (its chance to)
            fetches = _fetches_from_now(consumer)
            deadline = loop.time() + 30
            while not in_progress.is_set() and fetches[0] < 2:
                assert loop.time() < deadline, "no fetch after the seek"
                await asyncio.sleep(0.05)
            app.flow_control.resume()  # clears the stream queues
            consumer.resume_flow()
        finally:
            app.rebalancing = False
        go_on.set()
        deadline = loop.time() + 30
        while len(seen) < 20:
            assert loop.time() < deadline, f"{20 - len(seen)} records never processed"
            await asyncio.sleep(0.1)


async def _assigned(app: faust.App, tp: TP) -> None:
    """Until ``tp`` is assigned and the rebalance is over (60 s at most)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while tp not in app.consumer.assignment() or app.rebalancing:
        assert loop.time() < deadline, "never assigned"
        await asyncio.sleep(0.1)


def _fetches_from_now(consumer: Any) -> list[int]:
    """A counter of the consumer's fetches that return from now on (its ``_getmany``)."""
    count = [0]
    fetch = consumer._getmany

    async def counted(*args: Any, **kwargs: Any) -> Any:
        records = await fetch(*args, **kwargs)
        count[0] += 1
        return records

    consumer._getmany = counted
    return count
