"""exactly_once: a transaction the revoke's last commit left open is aborted at the rebalance
(``abort_open_transactions``), on the real broker: its outputs are never read committed, and the
producer goes on with new transactions. Kept open, the events read again after the rebalance
wrote their outputs into it a second time (a chaos run: 24 duplicates)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer

from faust_backpressure.faust_seam.transactions import abort_open_transactions
from faust_backpressure.testing.kafka_io import consume, create_topics

pytestmark = pytest.mark.kafka


async def test_a_transaction_left_open_is_aborted_and_its_outputs_never_committed(
        kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    topic = unique_name("open-txn")
    await create_topics(kafka_bootstrap, {topic: 1})
    kept = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap,
                            transactional_id=unique_name("kept-tid"))
    idle = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap,
                            transactional_id=unique_name("idle-tid"))
    await kept.start()
    await idle.start()
    try:
        await kept.begin_transaction()
        await (await kept.send(topic, b"first copy"))  # acked, in the open transaction
        producers = {"kept": kept, "idle": idle}
        assert await abort_open_transactions(producers) == 1  # the idle one had none
        assert set(producers) == {"kept", "idle"}  # aborted in place, not stopped
        async with kept.transaction():  # the events' second run
            await kept.send(topic, b"second copy")
        records = await consume(kafka_bootstrap, topic, until=1, settle=1.0,
                                isolation_level="read_committed")
        assert [r.value for r in records] == [b"second copy"]
        assert await abort_open_transactions(producers) == 0
    finally:
        await kept.stop()
        await idle.stop()
