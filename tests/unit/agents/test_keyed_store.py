"""The keyed limit's table adapter: write-through, and write-behind for nearly full levels."""

from __future__ import annotations

from faust_backpressure.agents.keyed_store import STATE, TableStore, encode_key
from faust_backpressure.limiters.keyed_buckets import KeyedTokenBuckets


class Table(dict[bytes, bytes]):
    """A Faust table's mapping and its ``data`` (the store) in one."""

    @property
    def data(self) -> Table:
        return self


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


def test_a_level_that_matters_is_written_through_and_removed_once_refilled() -> None:
    table = Table()
    clock = Clock()
    store = TableStore(table, 0.01, clock)
    buckets = KeyedTokenBuckets(10, 5, store=store, clock=clock)
    assert buckets.try_acquire("C42", 3)  # full again in 0.3 s: written
    assert STATE.unpack(table[encode_key("C42")])[0] == clock.now + 0.3
    clock.now += 0.299  # nearly full: the next write goes to memory, the old level is removed
    assert buckets.try_acquire("C42", 0.05)
    assert table == {} and buckets.tokens("C42") < 5
    clock.now += 1.0
    assert buckets.tokens("C42") == 5 and "C42" not in store


async def test_an_absent_key_is_full_without_a_read_once_the_index_is_built() -> None:
    class Counting(Table):
        reads = 0

        def get(self, key: bytes, default: object = None) -> object:
            self.reads += 1
            return super().get(key, default)

    table = Counting()
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
    assert store._present is None and store.index_generation is None
