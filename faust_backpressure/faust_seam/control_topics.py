"""Control traffic: internal records and our tables' writes, sent outside every transaction."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from faust.types import AppT

_CONTROL_TOPICS: weakref.WeakKeyDictionary[AppT, set[str]] = weakref.WeakKeyDictionary()


def mark_control_topic(app: AppT, topic: str) -> None:
    """Writes to ``topic`` (e.g. our tables' changelogs) are control state, not event output:
    under exactly_once they are sent outside every transaction (see docs/reliability.md)."""
    _CONTROL_TOPICS.setdefault(app, set()).add(topic)


def is_control_topic(app: AppT, topic: str) -> bool:
    return topic in _CONTROL_TOPICS.get(app, ())


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
