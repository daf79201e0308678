"""Shared Kafka helpers: raw topics, the bootstrap string, the key -> partition rule."""

from __future__ import annotations

import faust
from aiokafka.partitioner import DefaultPartitioner

from faust_backpressure.wire.kafka_clients import broker_bootstrap, partition_for_key, raw_topic


def test_partition_for_key_is_the_default_partitioners() -> None:
    partitions = list(range(7))
    for key in (b"orders-api", b"a", b"multi-tier:consumer", "é".encode()):
        assert partition_for_key(key, 7) == DefaultPartitioner()(key, partitions, partitions)


def test_raw_topic_and_bootstrap() -> None:
    app = faust.App("kafka-helpers", broker="kafka://h1:9093;kafka://h2")
    topic = raw_topic(app, "t", partitions=3)
    assert topic.get_topic_name() == "t" and topic.partitions == 3
    assert (topic.key_type, topic.value_type) == (bytes, bytes)
    assert broker_bootstrap(app) == "h1:9093,h2:9092"
