"""A keyed limit's bucket levels in a Faust table: the key encoding and the table adapter.

:class:`TableStore` is the ``(full_at, deferred, late)`` mapping
:class:`~faust_backpressure.limiters.keyed_buckets.KeyedTokenBuckets` reads and writes, kept
in the worker's own partition of the limit's table (raw bytes, ``STATE`` packed).

:class:`RefusedKeys` counts the keys a keyed limit refused most lately, for operators (never
for metric labels). Counted only on refusals (an admitted event costs nothing), over two
windows: the current one and the one before, so "lately" is the last one to two windows.
Memory is bounded: when a window holds ``capacity`` keys, the keys refused once are dropped
(the heavy ones stay).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import struct
from collections.abc import Callable, Hashable, Iterator, MutableMapping
from typing import Any

from faust_backpressure.faust_seam import ChangelogWriter, changelog_writer
from faust_backpressure.faust_seam.table_writes import UNWRITTEN
from faust_backpressure.limiters.keyed_buckets import KeyState

__all__ = ["STATE", "RefusedKeys", "TableStore", "describe_key", "encode_key", "partition_bytes",
           "store_url"]

#: A bucket level as stored: full_at (float), deferred (int), late (float).
STATE = struct.Struct("<dqd")


def encode_key(key: Hashable) -> bytes:
    """A key as table bytes, distinct across types (``"1"`` is not ``1``)."""
    if isinstance(key, bytes):
        return b"b" + key
    if isinstance(key, str):
        return b"s" + key.encode()
    return b"j" + json.dumps(key, sort_keys=True, default=str).encode()


def describe_key(encoded: bytes) -> str:
    """A key in :func:`~faust_backpressure.agents.keyed.encode_key`'s form, as text for people
    (bytes not valid UTF-8 are escaped)."""
    kind, body = encoded[:1], encoded[1:]
    text = body.decode("utf-8", errors="backslashreplace")
    if kind == b"j":
        try:
            return str(json.loads(text))
        except ValueError:
            return text
    return text


def partition_bytes(key: Hashable) -> bytes | None:
    """The bytes a producer keyed by ``key`` would hash (None: no obvious form)."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    return None


def store_url(url: str | None, name: str) -> str | None:
    """Faust ignores a bare store URL (``rocksdict://`` is falsy as a yarl URL) and uses the
    app's store instead: ``rocksdict:<table>`` names the same store (RocksDB takes the file
    name from the URL's path, relative to the app's table dir)."""
    if url is not None and url.endswith("://"):
        return f"{url[:-3]}:{name}"
    return url


class TableStore(MutableMapping[Hashable, KeyState]):
    """A Faust table (raw bytes) as the ``(full_at, deferred, late)`` mapping of the buckets.

    Write-behind for levels that are full again within ``hold`` seconds and have no copy in
    the table: kept in memory only (a limit that rarely binds then writes no changelog at
    all: such an entry is removed before it would matter). A crash or a rebalance can give such
    a key back at most ``hold * rate`` tokens. Everything else is written to the store at once
    and to the changelog in batches, once per event-loop turn
    (:class:`~faust_backpressure.faust_seam.ChangelogWriter`; Faust's table path for a store it
    does not know), both in the partition of the event being processed, as Faust's table path
    does.

    Only this worker writes the keys of its table partitions, so once the keys of the active
    partitions are listed after recovery (:meth:`rebuild_index`) the adapter knows every stored
    key and keeps the levels it read or wrote since in memory: a key not listed is full
    without a store read, a key read or written once is not read again. Until the listing is
    rebuilt after a rebalance every key is read from the table.
    """

    def __init__(self, table: Any, hold: float, clock: Callable[[], float]) -> None:
        self.table = table
        self.hold = hold
        self.clock = clock
        self._memory: dict[bytes, KeyState] = {}
        # Every stored key of the active partitions: its level, or None (listed, not read
        # yet); None as a whole: not known, read the table.
        self._known: dict[bytes, KeyState | None] | None = None
        self._building: dict[bytes, KeyState | None] | None = None
        self.index_generation: int | None = None  # the rebalance the index was built after
        self._writer: ChangelogWriter | bool | None = False  # False: not made yet

    def _write(self, encoded: bytes, packed: bytes | None) -> None:
        """The table's ``[encoded] = packed`` (None: ``del``), through the batched writer."""
        writer = self._writer
        if writer is False:
            writer = self._writer = changelog_writer(self.table)
        if isinstance(writer, ChangelogWriter):
            if packed is None:
                writer.delete(encoded)
            else:
                writer.set(encoded, packed)
        elif packed is None:
            del self.table[encoded]
        else:
            self.table[encoded] = packed

    def _stored(self, encoded: bytes) -> KeyState | None:
        """The table's level of ``encoded`` (None: no entry), from memory once known."""
        known = self._known
        if known is None:
            raw = self._read(encoded)
            return None if raw is None else STATE.unpack(raw)
        state = known.get(encoded, _ABSENT)
        if state is not None:
            return None if state is _ABSENT else state
        raw = self._read(encoded)  # listed at the rebuild, not read since
        if raw is None:
            del known[encoded]
            return None
        state = known[encoded] = STATE.unpack(raw)
        return state

    def _read(self, encoded: bytes) -> bytes | None:
        """The table's value: a write on its way to the store first."""
        writer = self._writer
        if isinstance(writer, ChangelogWriter):
            found = writer.written(encoded)
            if found is not UNWRITTEN:
                return found  # type: ignore[no-any-return]
        raw: bytes | None = self.table.data.get(encoded)
        return raw

    def get(self, key: Hashable, default: Any = None) -> Any:
        encoded = encode_key(key)
        held = self._memory.get(encoded)
        if held is not None:
            if held[0] > self.clock():
                return held
            # refilled; the table has no copy (held only then; the memory is dropped at every
            # rebalance, so another worker's newer level cannot hide behind it)
            del self._memory[encoded]
            return default
        state = self._stored(encoded)
        return default if state is None else state

    def __getitem__(self, key: Hashable) -> KeyState:
        found: KeyState | None = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __setitem__(self, key: Hashable, value: KeyState) -> None:
        encoded = encode_key(key)
        state = (float(value[0]), int(value[1]), float(value[2]))
        if state[1] <= 0 and state[0] - self.clock() <= self.hold \
                and self._stored(encoded) is None:
            # in memory only: no older level in the table to leave behind (with one, the
            # level is written over it, one record as a removal would be)
            self._memory[encoded] = state
            return
        self._memory.pop(encoded, None)
        if self._known is not None:
            self._known[encoded] = state
        if self._building is not None:
            self._building[encoded] = state
        self._write(encoded, STATE.pack(*state))

    def __delitem__(self, key: Hashable) -> None:
        encoded = encode_key(key)
        if self._memory.pop(encoded, None) is not None:
            return  # held in memory: the table has no copy
        if self._stored(encoded) is None:
            raise KeyError(key)
        self._write(encoded, None)
        if self._known is not None:
            self._known.pop(encoded, None)
        if self._building is not None:
            self._building.pop(encoded, None)

    def invalidate_index(self) -> None:
        """Partitions moved: read every key until :meth:`rebuild_index` has run again."""
        self._known = None
        self.index_generation = None

    async def rebuild_index(self, generation: int, current: Callable[[], int]) -> None:
        """After recovery (the table's restored entries are in the store, the source
        partitions not yet resumed): the keys of the active partitions. Yields to the loop
        now and then; levels written meanwhile are kept; installed only if no rebalance came
        in between (``current()`` is still ``generation``)."""
        self._known = None
        if isinstance(self._writer, ChangelogWriter):
            await self._writer.flush()  # every level written so far in the store, to be listed
        building: dict[bytes, KeyState | None] = {}
        self._building = building
        for n, encoded in enumerate(self.table.data.keys(), 1):
            building.setdefault(encoded, None)
            if n % 10_000 == 0:
                await asyncio.sleep(0)
                if current() != generation:
                    break  # a newer rebalance: its recovery lists the keys again
        if self._building is building:
            self._building = None
            if current() == generation:
                self._known = building
                self.index_generation = generation

    def __contains__(self, key: object) -> bool:
        return isinstance(key, Hashable) and self.get(key) is not None

    def drop_memory(self) -> None:
        """A rebalance: levels held in memory count as full (at most ``hold * rate`` tokens)."""
        self._memory.clear()

    def __iter__(self) -> Iterator[Hashable]:
        raise TypeError("a keyed limit's table is not iterated (keys are encoded)")

    def __len__(self) -> int:
        return len(self.table) + len(self._memory)


#: Not in the index: no entry in the table.
_ABSENT: Any = object()


class RefusedKeys:
    """Refusals by key over the current and the previous ``window`` seconds."""

    __slots__ = ("_current", "_previous", "_started", "capacity", "window")

    def __init__(self, window: float = 60.0, capacity: int = 10_000) -> None:
        self.window = window
        self.capacity = capacity
        self._current: dict[Hashable, int] = {}
        self._previous: dict[Hashable, int] = {}
        self._started: float | None = None

    def _roll(self, now: float) -> None:
        if self._started is None:
            self._started = now
        elapsed = now - self._started
        if elapsed >= self.window:
            # a gap of two windows or more: the previous one is over too
            self._previous = self._current if elapsed < 2 * self.window else {}
            self._current = {}
            self._started = now

    def count(self, key: Hashable, now: float) -> None:
        self._roll(now)
        current = self._current
        n = current.get(key)
        if n is None and len(current) >= self.capacity:
            self._current = current = {k: v for k, v in current.items() if v > 1}
            if len(current) >= self.capacity:
                return  # every key refused more than once: a new one waits for a window
        current[key] = (n or 0) + 1

    def top(self, n: int, now: float) -> list[tuple[Hashable, int]]:
        """The ``n`` keys refused most in the last one to two windows, most first."""
        self._roll(now)
        merged = dict(self._previous)
        for key, count in self._current.items():
            merged[key] = merged.get(key, 0) + count
        return heapq.nlargest(n, merged.items(), key=lambda item: item[1])
