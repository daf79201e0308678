"""aiokafka drops a topic first seen in an all-topics metadata refresh once it tracks another;
a record of that topic still in the producer's buffer then waits for a leader no refresh brings
(and Faust's flush before each commit with it: the dashboard test hung so at stop).
:class:`TopicKeepingProducer` (every Faust producer of an installed app) keeps the topic."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import faust
import pytest
from aiokafka import AIOKafkaProducer

from faust_backpressure.app import Backpressure
from faust_backpressure.faust_seam import TopicKeepingProducer
from faust_backpressure.testing.kafka_io import create_topics
from faust_backpressure.testing.settings import fast_faust_settings

pytestmark = pytest.mark.kafka


async def _buffered_record_delivered(producer_type: type[AIOKafkaProducer], bootstrap: str,
                                     unique_name: Callable[[str], str], wait: float) -> bool:
    """Whether a buffered record for ``known`` (first seen in an all-topics refresh) is
    delivered after a send to ``later`` (created after that refresh) made the producer track
    ``later``; ``wait`` s after it was sent (it lingers 3 s)."""
    known, later = unique_name("known"), unique_name("later")
    await create_topics(bootstrap, {known: 1})
    producer = producer_type(bootstrap_servers=bootstrap, linger_ms=3000)  # stays buffered
    await producer.start()
    try:
        # a refresh while no topic is tracked (Faust creates topics through the producer's
        # client, then refreshes) asks for every topic
        await producer.client.force_metadata_update()
        delivered = await producer.send(known, b"1")
        await create_topics(bootstrap, {later: 1})
        await producer.send(later, b"2")
        try:
            await asyncio.wait_for(asyncio.shield(delivered), wait)
        except asyncio.TimeoutError:
            producer.client.add_topic(known)  # the record then goes, and the producer can stop
            await asyncio.wait_for(delivered, 10)
            return False
        return True
    finally:
        await producer.stop()


async def test_aiokafka_forgets_a_topic_that_our_producer_keeps(
        kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    # the defect upstream: stuck for ever, 8 s (linger 3 s) show it (if this fails, aiokafka
    # fixed it: the patch can go)
    assert not await _buffered_record_delivered(AIOKafkaProducer, kafka_bootstrap, unique_name,
                                                wait=8)
    assert await _buffered_record_delivered(TopicKeepingProducer, kafka_bootstrap, unique_name,
                                            wait=30)


async def test_an_installed_apps_faust_producers_keep_their_topics(
        unique_name: Callable[[str], str]) -> None:
    app = faust.App(unique_name("app"), **fast_faust_settings(broker="kafka://127.0.0.1:1"))
    Backpressure(app)
    assert app.producer._producer_type is TopicKeepingProducer
    assert isinstance(app.producer._new_producer(), TopicKeepingProducer)
