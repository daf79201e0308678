"""The lag probe on a group that has never committed, and on topics that do not exist, with
stand-in Kafka clients (the broker's side is tested in tests/integration/ops/test_commands.py)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from faust_backpressure.control.probe import LagProbe


class Narrowed:
    """A client whose metadata faust_seam.keep_metadata_of can narrow to some topics."""

    topics: list[str] | None = None

    @property
    def _client(self) -> Narrowed:  # what faust_seam's metadata functions ask
        return self

    async def set_topics(self, topics: list[str]) -> None:
        self.topics = topics


class Consumer(Narrowed):
    def __init__(self, partitions: dict[str, set[int]], ends: dict[TopicPartition, int]) -> None:
        self.partitions, self.ends = partitions, ends
        self.asked = False

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in tps}

    async def force_metadata_update(self) -> None:
        self.asked = True


class Admin(Narrowed):
    def __init__(self, committed: dict[TopicPartition, int]) -> None:
        self.committed = committed

    async def list_consumer_group_offsets(self, group: str) -> dict[TopicPartition, Any]:
        return {tp: OffsetAndMetadata(offset, "") for tp, offset in self.committed.items()}


def _probe(committed: dict[TopicPartition, int], *, counted: bool,
           topics: dict[str, set[int]] | None = None) -> LagProbe:
    probe = LagProbe("unused:9092", "billing", ["priced"], count_uncommitted=counted)
    tps = {TopicPartition("priced", 0): 100, TopicPartition("priced", 1): 200}
    probe._consumer = Consumer({"priced": {0, 1}} if topics is None else topics,  # type: ignore[assignment]
                               tps)
    probe._admin = Admin(committed)  # type: ignore[assignment]
    return probe


async def test_a_group_with_no_commits_is_a_warning_and_no_lag_for_a_control_loop() -> None:
    probe = _probe({}, counted=False)
    assert await probe.measure() == (0, 0)
    assert probe.warning is not None and "group 'billing' has no committed offsets on priced" \
        in probe.warning and "300 records is not counted" in probe.warning
    assert probe.uncommitted_backlog == 300


async def test_a_credit_flow_counts_it_and_says_so() -> None:
    probe = _probe({}, counted=True)
    assert await probe.measure() == (300, 0)
    assert probe.warning is not None and "counts as lag" in probe.warning


async def test_once_the_group_commits_its_lag_counts_and_the_warning_is_gone() -> None:
    # committed on one partition only: the other counts from 0 (a running group)
    probe = _probe({TopicPartition("priced", 0): 40}, counted=False)
    assert await probe.measure() == (60 + 200, 40)
    assert probe.warning is None and probe.uncommitted_backlog == 0


async def test_its_clients_keep_the_metadata_of_the_probed_topics_only() -> None:
    # else each metadata refresh fetches and keeps every topic of the cluster
    probe = _probe({TopicPartition("priced", 0): 40}, counted=False)
    await probe.measure()
    assert probe._consumer._client.topics == ["priced"]  # type: ignore[union-attr]
    assert probe._admin._client.topics == ["priced"]  # type: ignore[union-attr]


async def test_a_topic_that_does_not_exist_is_not_asked_for_by_name() -> None:
    # (a broker that auto-creates topics would create it)
    probe = _probe({}, counted=False, topics={})
    with pytest.raises(LookupError):
        await probe.measure()
    assert probe._consumer._client.topics is None  # type: ignore[union-attr]


async def test_a_topic_that_does_not_exist_is_no_sample_and_a_warning() -> None:
    probe = _probe({}, counted=False, topics={})
    with pytest.raises(LookupError):  # an unknown lag is not a zero lag
        await probe.measure()
    assert probe.warning == "topics ['priced'] do not exist"
    assert probe._consumer.asked  # type: ignore[union-attr]  # the broker was asked first
