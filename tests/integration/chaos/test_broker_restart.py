"""The harness's broker outage: a halted broker comes back on its ports with all its data."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from faust_backpressure.testing.broker import LocalKafkaBroker, _port_open
from faust_backpressure.testing.kafka_io import (
    commit_offsets,
    committed_offsets,
    consume,
    create_topics,
    produce,
)

pytestmark = pytest.mark.kafka


async def _transaction(bootstrap: str, txn_id: str, topic: str,
                       values: list[bytes]) -> tuple[int, int]:
    """Commit ``values`` in one transaction; return the producer's (id, epoch)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=txn_id)
    await producer.start()
    try:
        async with producer.transaction():
            for value in values:
                await producer.send(topic, value=value)
        txn = producer._txn_manager
        assert txn is not None
        return int(txn.producer_id), int(txn.producer_epoch)
    finally:
        await producer.stop()


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_restart_keeps_ports_topics_offsets_and_transactions(
        own_broker: LocalKafkaBroker, kill: bool) -> None:
    broker = own_broker
    bootstrap, controller = broker.bootstrap_servers, broker.controller_port
    topic, txn_topic, group = "plain", "txn", "the-group"
    txn_id = f"tx-{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, {topic: 3, txn_topic: 1})
    sent = {b"v%d" % i for i in range(300)}
    await produce(bootstrap, topic, ((v, v) for v in sorted(sent)))
    await commit_offsets(bootstrap, group, topic, {0: 5, 1: 7, 2: 9})
    first = await _transaction(bootstrap, txn_id, txn_topic, [b"t%d" % i for i in range(10)])

    # Both block (restart waits for the broker with its own event loop): run them in a thread.
    await asyncio.to_thread(broker.halt, kill=kill)
    assert not broker.running and not _port_open(bootstrap)
    await asyncio.to_thread(broker.restart)

    assert (broker.bootstrap_servers, broker.controller_port) == (bootstrap, controller)
    assert broker.starts == 2
    assert {r.value for r in await consume(bootstrap, topic, until=len(sent))} == sent
    assert await committed_offsets(bootstrap, group, topic) == {0: 5, 1: 7, 2: 9}
    committed = await consume(bootstrap, txn_topic, until=10, isolation_level="read_committed")
    assert sorted(r.value for r in committed) == sorted(b"t%d" % i for i in range(10))
    # The transaction coordinator remembers the id: same producer id, the epoch bumped (a lost
    # transaction log would hand out a new producer id at epoch 0).
    again = await _transaction(bootstrap, txn_id, txn_topic, [b"after"])
    assert again[0] == first[0] and again[1] > first[1], (first, again)
