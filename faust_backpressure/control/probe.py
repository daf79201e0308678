"""Consumer lag of a downstream group, measured with plain aiokafka clients.

The control loop and credit flow sample it once per interval: the sum over the partitions of
``downstream_topics`` of the end offset minus the group's committed offset (the start of the
partition where the group has committed nothing). A topic the broker does not know yet is an
error, not a lag of zero. A group with no committed offset on any of the topics (a typo, a
consumer not started) is :attr:`LagProbe.warning`; with ``count_uncommitted=False`` (the control
loop's default) its backlog is not counted as lag until it commits, while a credit flow counts
it (a stage whose consumer has not started must still bound its output).
:func:`close_probes_on_stop` closes the clients when the worker stops.

Example::

    probe = LagProbe("localhost:9092", "billing", ["orders-priced"])
    backlog = await probe.lag()
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.types import AppT
from mode import Service

from faust_backpressure.faust_seam import force_metadata_update, keep_metadata_of
from faust_backpressure.wire.kafka_clients import KafkaClientSettings, kafka_admin, kafka_consumer

__all__ = ["LagProbe", "close_probes_on_stop", "no_commits_warning"]

log = logging.getLogger(__name__)


class LagProbe:
    """Consumer lag of a group on some topics: sum over partitions of end - committed."""

    def __init__(self, kafka: KafkaClientSettings | str, group: str,
                 topics: Sequence[str], *, count_uncommitted: bool = True) -> None:
        """``kafka``: the clients' settings (``wire.kafka_clients.client_settings(app, ...)``) or a
        bootstrap string for an open cluster. ``count_uncommitted``: whether a group that has
        committed nothing on the topics has their whole backlog as lag (else 0 until it
        commits)."""
        if not topics:
            raise ValueError("downstream_topics must name at least one topic")
        self.kafka, self.group, self.topics = kafka, group, list(topics)
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._narrowed = False  # the clients' metadata: the probed topics only
        #: ``(topic, partition) -> the group's committed offset`` at the last measurement
        #: (the partition's start where it committed nothing).
        self.committed: dict[tuple[str, int], int] = {}
        self.count_uncommitted = count_uncommitted
        #: What is wrong with the input at the last measurement (None: nothing): the topics
        #: do not exist, or the group has committed nothing on them.
        self.warning: str | None = None
        #: The backlog a group with no commits has (counted or not), at the last measurement.
        self.uncommitted_backlog = 0

    async def lag(self) -> int:
        return (await self.measure())[0]

    async def measure(self) -> tuple[int, int]:
        """``(lag, processed)``: the lag, and the group's committed offsets summed over the
        partitions (a running count of what it processed; its slope is its rate)."""
        if self._admin is None or self._consumer is None:
            self._admin = kafka_admin(self.kafka, "lag-probe")
            await self._admin.start()
            self._consumer = kafka_consumer(self.kafka, "lag-probe")
            await self._consumer.start()
        partitions = self._partitions()
        if {tp.topic for tp in partitions} != set(self.topics):  # first call: ask the broker
            await force_metadata_update(self._consumer)
            partitions = self._partitions()
            missing = set(self.topics) - {tp.topic for tp in partitions}
            if missing:  # an unknown lag is not a zero lag: no sample
                self.warning = f"topics {sorted(missing)} do not exist"
                raise LookupError(f"no partitions known for {sorted(missing)}")
        if not self._narrowed:  # else each refresh fetches and keeps every topic of the cluster
            await keep_metadata_of(self._consumer, self.topics)
            await keep_metadata_of(self._admin, self.topics)
            self._narrowed = True
        ends = await self._consumer.end_offsets(partitions)
        committed = await self._admin.list_consumer_group_offsets(self.group)
        total = processed = 0
        any_commit = False
        for tp in partitions:
            meta = committed.get(tp)
            has = meta is not None and meta.offset >= 0
            any_commit = any_commit or has
            start = meta.offset if has else 0
            total += max(ends[tp] - start, 0)
            processed += start
            self.committed[tp.topic, tp.partition] = start
        self.uncommitted_backlog = 0 if any_commit else total
        self.warning = None if any_commit else no_commits_warning(
            self.group, self.topics, total, counted=self.count_uncommitted)
        if not any_commit and not self.count_uncommitted:
            return 0, processed
        return total, processed

    async def members(self, group: str | None = None) -> int | None:
        """How many members the group (default: the probed one) has now (None if the
        broker does not say)."""
        if self._admin is None:
            return None
        group = self.group if group is None else group
        try:
            described = await self._admin.describe_consumer_groups([group])
        except Exception as exc:  # broad: an older broker, an ACL, a connection error: no
            # recommendation, still a sample
            log.debug("members of group %s not described: %r", group, exc)
            return None
        return _member_count(described, group)

    def _partitions(self) -> list[TopicPartition]:
        assert self._consumer is not None
        return [TopicPartition(topic, p) for topic in self.topics
                for p in sorted(self._consumer.partitions_for_topic(topic) or ())]

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
        if self._consumer is not None:
            await self._consumer.stop()
        self._admin = self._consumer = None
        self._narrowed = False



def no_commits_warning(group: str, topics: Sequence[str], backlog: int, *,
                       counted: bool) -> str:
    """What operators read when ``group`` has committed nothing on ``topics``."""
    return (f"group {group!r} has no committed offsets on {', '.join(topics)} (a typo, or "
            f"its consumer has not started): its backlog of {backlog:,} records "
            + ("counts as lag" if counted else "is not counted as lag until it commits"))


def _member_count(described: Any, group: str) -> int | None:
    """Members of ``group`` in aiokafka's DescribeGroups response(s)."""
    for response in described if isinstance(described, list) else [described]:
        for entry in getattr(response, "groups", ()):
            # (error_code, group_id, state, protocol_type, protocol, members, ...)
            if len(entry) > 5 and entry[1] == group and entry[0] == 0:
                return len(entry[5])
    return None


class _ProbeCloser(Service):
    """Closes lag probes' Kafka clients when the worker stops."""

    def __init__(self, probes: Callable[[], Iterable[LagProbe]], **kwargs: Any) -> None:
        self.probes = probes
        super().__init__(**kwargs)

    async def on_stop(self) -> None:
        for probe in self.probes():
            with contextlib.suppress(Exception):  # best effort: the worker is stopping
                await probe.close()


def close_probes_on_stop(app: AppT, probes: Callable[[], Iterable[LagProbe]]) -> None:
    """Close the probes ``probes()`` returns when ``app`` stops."""
    async def start_closer() -> None:
        await app.add_runtime_dependency(_ProbeCloser(probes))

    app.task(start_closer)
