"""Per-key order of a batch pipeline's outputs (``ordered_by_key=True``, docs/batching.md).

:func:`hold_back` (pure) splits a batch's events into those sent at once and those held
back, per key: the first failed event of a key and every later event of that key, or every
event of a key still held from an earlier batch. :class:`KeyChains` runs each held key's
events after that key's earlier held events of the same partition were sent.

Example::

    now, held = hold_back([b"a", b"b", b"a"], [True, False, False], held=())
    # now == [1]; held == {b"a": [0, 2]}: b"a"'s second event waits for its first
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Container, Hashable, Sequence
from typing import Any, TypeVar

__all__ = ["Item", "KeyChains", "all_acked", "hold_back"]

T = TypeVar("T")
#: A batch's event: (raw record, decoded key, decoded value, ``process_batch``'s result).
Item = tuple[Any, Any, Any, Any]


def hold_back(keys: Sequence[Hashable], failed: Sequence[bool],
              held: Container[Hashable]) -> tuple[list[int], dict[Hashable, list[int]]]:
    """The indexes of the events to send now, in order, and per held key the indexes of its
    held events, in order. An event is held if its key failed before it in this batch or is
    in ``held`` (unresolved from an earlier batch)."""
    now: list[int] = []
    later: dict[Hashable, list[int]] = {}
    for index, (key, bad) in enumerate(zip(keys, failed, strict=True)):
        waiting = later.get(key)
        if waiting is not None:
            waiting.append(index)
        elif bad or key in held:
            later[key] = [index]
        else:
            now.append(index)
    return now, later


class KeyChains:
    """Per partition and key, the task of its latest held events, while it runs.

    A new chain of a key starts once the previous chain of that key (an earlier batch's)
    is done. If the previous chain failed or was cancelled, the new one raises ``broken()``
    without running: the key's later outputs must not go out before the earlier ones."""

    def __init__(self, broken: Callable[[], Exception]) -> None:
        self._broken = broken
        self._tails: dict[Hashable, dict[Hashable, asyncio.Future[Any]]] = {}

    def hold_back(self, tp: Hashable,
                  items: list[Item]) -> tuple[list[Item], dict[Hashable, list[Item]]]:
        """A batch's events of ``tp`` to send now, in order, and per held key its held
        events, in order (:func:`hold_back`, keyed by the raw record's key)."""
        now, held = hold_back([item[0].key for item in items],
                              [isinstance(item[3], BaseException) for item in items],
                              self.held(tp))
        return ([items[i] for i in now],
                {key: [items[i] for i in indexes] for key, indexes in held.items()})

    def start(self, tp: Hashable, held: dict[Hashable, list[Item]],
              resolve: Callable[[list[Item]], Awaitable[list[Any]]],
              ) -> list[asyncio.Future[list[Any]]]:
        """Per held key a task: ``resolve(its held events)`` in the key's chain (it returns
        their send futures), then their acks (their metadata). Called once the batch's
        other events were sent: aiokafka's ``send`` may wait before it queues its record
        (for a topic's metadata), and a chain's send must not overtake them."""
        acks: list[asyncio.Future[list[Any]]] = []
        for key, events in held.items():
            chain = self.chain(tp, key, functools.partial(resolve, events))
            acks.append(asyncio.ensure_future(_acked_after(chain)))
        return acks

    def held(self, tp: Hashable) -> Container[Hashable]:
        """The keys of ``tp`` with a chain still running."""
        return self._tails.get(tp, {})

    def chain(self, tp: Hashable, key: Hashable,
              run: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """A task running ``run()`` after the key's previous chain; it is the key's chain
        until it is done."""
        tails = self._tails.setdefault(tp, {})
        task: asyncio.Future[T] = asyncio.ensure_future(self._after(tails.get(key), run))
        tails[key] = task
        task.add_done_callback(lambda done: self._done(tp, tails, key, done))
        return task

    def forget(self, tps: Container[Hashable]) -> None:
        """Revoked partitions: their chains run out, later batches do not wait for them."""
        for tp in [tp for tp in self._tails if tp in tps]:
            del self._tails[tp]

    def __len__(self) -> int:
        return sum(len(tails) for tails in self._tails.values())

    async def _after(self, previous: asyncio.Future[Any] | None,
                     run: Callable[[], Awaitable[T]]) -> T:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its batch's: never raised here
            if previous.cancelled() or previous.exception() is not None:
                raise self._broken()
        return await run()

    def _done(self, tp: Hashable, tails: dict[Hashable, asyncio.Future[Any]], key: Hashable,
              task: asyncio.Future[Any]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved (no "never retrieved" warning): its batch reports it
        if tails.get(key) is task:
            del tails[key]
            if not tails and self._tails.get(tp) is tails:
                del self._tails[tp]


async def all_acked(futures: list[Any]) -> list[Any]:
    """Every send future acked by Kafka (their metadata); the first failure raises (the
    batch is not acked)."""
    return [await future for future in futures]


async def _acked_after(chain: asyncio.Future[list[Any]]) -> list[Any]:
    """A chain's sends acked, once the chain made them."""
    return await all_acked(await chain)
