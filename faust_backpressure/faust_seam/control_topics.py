"""Control traffic: internal records and our tables' writes, sent outside every transaction."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.types import AppT

from faust_backpressure.faust_seam.context import context_of, find_context


def mark_control_topic(app: AppT, topic: str) -> None:
    """Writes to ``topic`` (e.g. our tables' changelogs) are control state, not event output:
    under exactly_once they are sent outside every transaction (see docs/reliability.md)."""
    context_of(app).control_topics.add(topic)


def is_control_topic(app: AppT, topic: str) -> bool:
    context = find_context(app)
    return context is not None and topic in context.control_topics


async def send_control(app: AppT, topic: str, key: bytes | None, value: bytes | None, *,
                       headers: Any = None) -> asyncio.Future[Any]:
    """Send an internal record outside any transaction; returns the delivery future.

    Lease requests, grants, commands and pressure samples are control traffic: they must not
    join (or need) the transaction of an input partition, which under exactly_once only the
    partition's owner has. The app's default producer is never transactional.
    """
    await app.maybe_start_producer()
    future: asyncio.Future[Any] = await app.producer.send(  # type: ignore[assignment]
        topic, key, value, None, None, headers)
    return future
