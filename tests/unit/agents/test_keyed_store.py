"""The keyed limit's table adapter: write-through, and write-behind for nearly full levels."""

from __future__ import annotations

from faust_backpressure.agents.keyed_store import STATE, TableStore, encode_key
from faust_backpressure.limiters.keyed_buckets import KeyedTokenBuckets


class Table(dict[bytes, bytes]):
    """A Faust table's mapping and its ``data`` (the store) in one."""

    @property
    def data(self) -> Table:
        return self


class ReadCounting(Table):
    """A table that counts the store reads."""

    reads = 0

    def get(self, key: bytes, default: object = None) -> object:  # type: ignore[override]
        self.reads += 1
        return super().get(key, default)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_level_full_again_within_the_hold_is_never_written() -> None:
    table = Table()
    clock = Clock()
    buckets = KeyedTokenBuckets(1e9, 1e9, store=TableStore(table, 0.01, clock), clock=clock)
    for key in range(1000):
        assert buckets.try_acquire(key)
    assert table == {}  # nothing for the changelog
    clock.now += 0.001
    assert buckets.expire(limit=2000) == 0 and buckets.queued == 0  # gone from memory too


def test_a_level_that_matters_is_written_through_and_removed_once_full_for_keep_full() -> None:
    table = Table()
    clock = Clock()
    store = TableStore(table, 0.01, clock)
    buckets = KeyedTokenBuckets(10, 5, store=store, clock=clock, keep_full=60.0)
    assert buckets.try_acquire("C42", 3)  # full again in 0.3 s: written
    assert STATE.unpack(table[encode_key("C42")])[0] == clock.now + 0.3
    clock.now += 0.299  # nearly full, but the table has a level: written over it, not held
    assert buckets.try_acquire("C42", 0.05)
    assert STATE.unpack(table[encode_key("C42")])[0] == clock.now + 0.006
    assert buckets.tokens("C42") < 5
    clock.now += 1.0  # full: the stored level says so, nothing written
    assert buckets.tokens("C42") == 5 and buckets.expire(limit=10) == 0
    assert encode_key("C42") in table
    clock.now += 60.0  # full for keep_full: removed (a tombstone)
    assert buckets.expire(limit=10) == 1 and table == {} and "C42" not in store


def test_a_key_back_within_keep_full_costs_one_write_per_event() -> None:
    class Counting(Table):
        writes = 0

        def __setitem__(self, key: bytes, value: bytes) -> None:
            self.writes += 1
            super().__setitem__(key, value)

    table = Counting()
    clock = Clock()
    buckets = KeyedTokenBuckets(1, 3, store=TableStore(table, 0.01, clock), clock=clock,
                                keep_full=60.0)
    for _ in range(3):  # one event every 10 s: each leaves a level full 1 s later
        assert buckets.try_acquire("k")
        buckets.expire()
        clock.now += 10.0
    assert table.writes == 3 and len(table) == 1  # no removal between the events
    assert buckets.tokens("k") == 3


async def test_an_absent_key_is_full_without_a_read_once_the_index_is_built() -> None:
    table = ReadCounting()
    restored = encode_key("restored")
    table[restored] = STATE.pack(2000.0, 0, 0.0)  # from the changelog, before the index
    clock = Clock()
    store = TableStore(table, 0.01, clock)
    buckets = KeyedTokenBuckets(10, 5, store=store, clock=clock)
    assert buckets.try_acquire("new") and table.reads == 1  # no index yet: read
    await store.rebuild_index(1, lambda: 1)
    before = table.reads
    assert buckets.try_acquire("other") and table.reads == before  # known absent: no read
    assert not buckets.try_acquire("restored", 5)  # a restored entry is honoured
    assert buckets.try_acquire("C42", 3)  # written after the build: read from then on
    assert "C42" in store and abs(buckets.tokens("C42") - 2) < 1e-6
    store.invalidate_index()  # a rebalance: back to reading every key
    before = table.reads
    assert buckets.try_acquire("someone")
    assert table.reads > before


async def test_a_rebuild_overtaken_by_a_rebalance_is_not_installed() -> None:
    table = Table()
    store = TableStore(table, 0.01, Clock())
    await store.rebuild_index(1, lambda: 2)
    assert store._known is None and store.index_generation is None


async def test_a_level_read_or_written_once_is_not_read_again() -> None:
    table = ReadCounting()
    table[encode_key("restored")] = STATE.pack(2000.0, 0, 0.0)
    clock = Clock()
    store = TableStore(table, 0.01, clock)
    await store.rebuild_index(1, lambda: 1)
    buckets = KeyedTokenBuckets(1, 3, store=store, clock=clock, keep_full=60.0)
    assert not buckets.try_acquire("restored", 3)  # listed: read once
    assert table.reads == 1
    for _ in range(3):
        buckets.tokens("restored")
        assert buckets.try_acquire("written")
    assert table.reads == 1  # both levels from memory since
    assert abs(buckets.tokens("written")) < 1e-9
    table.clear()  # what the memory holds is what the table held (this worker the only writer)
    clock.now += 3.0
    assert buckets.tokens("written") == 3


async def test_a_level_written_while_the_keys_are_listed_is_kept() -> None:
    class Listing(ReadCounting):
        def keys(self):  # type: ignore[no-untyped-def]
            yield encode_key("a")
            store["x"] = (2000.0, 1, 0.0)  # a write while the keys are listed
            yield from [encode_key("x")]  # and the listing sees it too

    table = Listing()
    table[encode_key("a")] = STATE.pack(900.0, 0, 0.0)  # restored, full long ago
    store = TableStore(table, 0.01, Clock())
    await store.rebuild_index(1, lambda: 1)
    before = table.reads
    assert store.get("x") == (2000.0, 1, 0.0) and table.reads == before  # kept, not re-read
    assert store.get("a") == (900.0, 0, 0.0) and table.reads == before + 1  # listed: read
