"""A keyed limit's bucket levels in a Faust table: the key encoding and the table adapter.

:class:`TableStore` is the ``(full_at, deferred, late)`` mapping
:class:`~faust_backpressure.limiters.keyed_buckets.KeyedTokenBuckets` reads and writes, kept
in the worker's own partition of the limit's table (raw bytes, ``STATE`` packed).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable, Hashable, Iterator, MutableMapping
from typing import Any

from faust_backpressure.faust_seam import ChangelogWriter, changelog_writer
from faust_backpressure.limiters.keyed_buckets import KeyState

__all__ = ["STATE", "TableStore", "encode_key", "key_type", "partition_bytes", "store_url"]

#: A bucket level as stored: full_at (float), deferred (int), late (float).
STATE = struct.Struct("<dqd")


def encode_key(key: Hashable) -> bytes:
    """A key as table bytes, distinct across types (``"1"`` is not ``1``)."""
    if isinstance(key, bytes):
        return b"b" + key
    if isinstance(key, str):
        return b"s" + key.encode()
    return b"j" + json.dumps(key, sort_keys=True, default=str).encode()


def key_type(key: Hashable) -> str:
    """As ``--key-type`` names it (``str``, ``bytes``, ``int``; else the type's name)."""
    return type(key).__name__


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

    Write-behind for levels that are full again within ``hold`` seconds: kept in memory only
    (a limit that rarely binds then writes no changelog at all: such an entry is removed before
    it would matter). A crash or a rebalance can give such a key back at most ``hold * rate``
    tokens. Everything else is written to the store at once and to the changelog in batches,
    once per event-loop turn (:class:`~faust_backpressure.faust_seam.ChangelogWriter`; Faust's
    table path for a store it does not know), both in the partition of the event being
    processed, as Faust's table path does.

    Most keys have no entry (absent = full), so the adapter keeps the set of keys the table
    may hold (a superset: every key written since, and every key of the active partitions
    when it was rebuilt after recovery); a key not in it is full without a store read. Until
    the set is rebuilt after a rebalance (:meth:`rebuild_index`) every key is read.
    """

    def __init__(self, table: Any, hold: float, clock: Callable[[], float]) -> None:
        self.table = table
        self.hold = hold
        self.clock = clock
        self._memory: dict[bytes, KeyState] = {}
        self._from_table: bytes | None = None  # the last key read from the table
        self._present: set[bytes] | None = None  # None: not known, read the table
        self._building: set[bytes] | None = None
        self.index_generation: int | None = None  # the rebalance the set was built after
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

    def get(self, key: Hashable, default: Any = None) -> Any:
        encoded = encode_key(key)
        held = self._memory.get(encoded)
        if held is not None:
            if held[0] > self.clock():
                return held
            # refilled; the table has no copy (removed when stored; the memory is dropped at
            # every rebalance, so another worker's newer level cannot hide behind it)
            del self._memory[encoded]
            return default
        present = self._present
        if present is not None and encoded not in present:
            return default
        raw = self.table.data.get(encoded)
        if raw is None:
            return default
        self._from_table = encoded
        return STATE.unpack(raw)

    def __getitem__(self, key: Hashable) -> KeyState:
        found: KeyState | None = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __setitem__(self, key: Hashable, value: KeyState) -> None:
        encoded = encode_key(key)
        full_at, deferred, late = float(value[0]), int(value[1]), float(value[2])
        if deferred <= 0 and full_at - self.clock() <= self.hold:
            self._memory[encoded] = (full_at, deferred, late)
            # never leave an older level behind (the buckets read a key before they write it)
            if self._from_table == encoded and self.table.data.get(encoded) is not None:
                self._write(encoded, None)
                self._forget(encoded)
            return
        self._memory.pop(encoded, None)
        if self._present is not None:
            self._present.add(encoded)
        if self._building is not None:
            self._building.add(encoded)
        self._write(encoded, STATE.pack(full_at, deferred, late))

    def __delitem__(self, key: Hashable) -> None:
        encoded = encode_key(key)
        if self._memory.pop(encoded, None) is not None:
            return  # held in memory: its table copy was removed when it was stored
        if (self._present is not None and encoded not in self._present) \
                or self.table.data.get(encoded) is None:
            raise KeyError(key)
        self._write(encoded, None)
        self._forget(encoded)

    def _forget(self, encoded: bytes) -> None:
        if self._present is not None:
            self._present.discard(encoded)

    def invalidate_index(self) -> None:
        """Partitions moved: read every key until :meth:`rebuild_index` has run again."""
        self._present = None
        self.index_generation = None

    async def rebuild_index(self, generation: int, current: Callable[[], int]) -> None:
        """After recovery (the table's restored entries are in the store, the source
        partitions not yet resumed): the set of keys of the active partitions. Yields to the
        loop now and then; keys written meanwhile are added; installed only if no rebalance
        came in between (``current()`` is still ``generation``)."""
        self._present = None
        building = self._building = set()
        for n, encoded in enumerate(self.table.data.keys(), 1):
            building.add(encoded)
            if n % 10_000 == 0:
                await asyncio.sleep(0)
                if current() != generation:
                    break  # a newer rebalance: its recovery lists the keys again
        if self._building is building:
            self._building = None
            if current() == generation:
                self._present = building
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
