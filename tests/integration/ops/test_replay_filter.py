"""Issue 14: ``dlq-replay --error-type T`` never moves the group past records it did not
replay, and a later replay does not send the ones it did replay a second time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from faust_backpressure.agents import headers as h
from faust_backpressure.agents import replay_dlq
from faust_backpressure.testing.kafka_io import create_topics, read_to_end

pytestmark = pytest.mark.kafka


async def _dlq(bootstrap: str, topic: str, kinds: list[str]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i, kind in enumerate(kinds):
            await producer.send_and_wait(topic, key=b"k%d" % i, value=b"%s-%d" % (kind.encode(), i),
                                         headers=[(h.PIPELINE, b"p"),
                                                  (h.ERROR_TYPE, kind.encode())])
    finally:
        await producer.stop()


async def test_a_filtered_replay_leaves_other_records_for_later_and_none_is_sent_twice(
        kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    dlq, target, group = unique_name("dlq"), unique_name("target"), unique_name("group")
    await create_topics(kafka_bootstrap, {dlq: 1, target: 1})
    kinds = ["A", "B"] * 5 + ["A"] * 2  # 7 A, 5 B, interleaved

    async def replay(error_type: str | None) -> tuple[int, str]:
        report = await replay_dlq(kafka_bootstrap, pipeline="p", dlq_topic=dlq,
                                  target_topic=target, group_id=group, error_type=error_type)
        return report.replayed, report.summary()

    await _dlq(kafka_bootstrap, dlq, kinds)
    replayed, summary = await replay("NoSuchError")
    assert replayed == 0 and "left 12 record(s) of other error types" in summary
    replayed, _ = await replay("A")
    assert replayed == 7
    replayed, summary = await replay(None)  # the B records only: A went already
    assert replayed == 5 and "skipped" in summary
    assert (await replay(None))[0] == 0
    out = await read_to_end(kafka_bootstrap, target)
    assert Counter(r.value for r in out) == Counter(
        b"%s-%d" % (k.encode(), i) for i, k in enumerate(kinds))
