"""Helpers shared by the agent integration tests."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import ConsumerRecord

from faust_backpressure.testing.kafka_io import consume

Record = ConsumerRecord[bytes, bytes]


def hdr(record: Record) -> dict[str, bytes]:
    return dict(record.headers)


async def read_committed(bootstrap: str, topic: str, *, until: Callable[[list[Record]], bool],
                         timeout: float = 60.0, settle: float = 0.0) -> list[Record]:
    """``kafka_io.consume`` of committed transactional records only."""
    return await consume(bootstrap, topic, until=until, timeout=timeout, settle=settle,
                         isolation_level="read_committed")
