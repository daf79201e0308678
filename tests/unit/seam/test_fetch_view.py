"""The fetch's partition filter against aiokafka's own ``Fetcher.fetched_records`` (its buffer
and assignment faked: no broker)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import Fetcher, FetchResult

from faust_backpressure.faust_seam.fetch_view import LivePartitions, fetch_filter

CHANGELOG = TopicPartition("app-kept-changelog", 0)
SOURCE = TopicPartition("src", 0)


class _Records:
    """aiokafka's PartitionRecords as FetchResult uses them: an iterator and where it ends."""

    def __init__(self, offsets: range) -> None:
        self._it = iter([SimpleNamespace(offset=o) for o in offsets])
        self.next_fetch_offset = offsets.start

    def __iter__(self) -> _Records:
        return self

    def __next__(self) -> Any:
        record = next(self._it)
        self.next_fetch_offset = record.offset + 1
        return record


def _fetcher() -> Any:
    """A Fetcher holding records 0..4 of each partition, both assigned and fetchable."""
    state = {tp: SimpleNamespace(paused=False, position=0) for tp in (CHANGELOG, SOURCE)}
    for s in state.values():
        s.consumed_to = lambda offset, s=s: setattr(s, "position", offset)
    assignment = SimpleNamespace(active=True, state_value=state.__getitem__)
    fetcher: Any = Fetcher.__new__(Fetcher)
    fetcher._subscriptions = SimpleNamespace(reassignment_in_progress=False,
                                             is_assigned=lambda tp: True)
    fetcher._records = {tp: FetchResult(tp, assignment=assignment, backoff=0,
                                        partition_records=_Records(range(5)))
                        for tp in (CHANGELOG, SOURCE)}
    fetcher._notify = lambda future: None
    fetcher._wait_consume_future = None
    return fetcher


async def test_an_empty_live_set_is_every_partition_to_aiokafka() -> None:
    # Faust's own argument: its live set, emptied while the fetch waited (all paused)
    drained = await _fetcher().fetched_records(set(), timeout=0)
    assert set(drained) == {CHANGELOG, SOURCE}


async def test_the_view_of_an_empty_live_set_matches_nothing() -> None:
    live: set[Any] = set()
    assert await _fetcher().fetched_records(LivePartitions(live), timeout=0) == {}


async def test_the_view_follows_the_live_set() -> None:
    live: set[Any] = set()
    view = fetch_filter(live)
    live.add(CHANGELOG)  # resumed while the fetch waits
    drained = await _fetcher().fetched_records(view, timeout=0)
    assert {tp: [r.offset for r in batch] for tp, batch in drained.items()} == {
        CHANGELOG: [0, 1, 2, 3, 4]}
    assert CHANGELOG in view and SOURCE not in view and len(view) == 1 and list(view) == [CHANGELOG]


def test_a_client_only_app_is_not_filtered() -> None:
    assert fetch_filter(None) is None
