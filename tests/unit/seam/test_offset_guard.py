"""The offset guard: a jump in a partition's offsets is re-read once, never skipped blindly."""

from __future__ import annotations

import warnings

import pytest
from faust.types import TP

from faust_backpressure.faust_seam import FaustVersionWarning, OffsetGuard, check_faust_version

tp = TP("orders", 0)
other = TP("orders", 1)


def test_consecutive_offsets_pass() -> None:
    guard = OffsetGuard()
    guard.reset(tp, 10)
    assert [guard.check(tp, o)[0] for o in range(10, 15)] == [OffsetGuard.ACCEPT] * 5
    assert guard.rereads == 0


def test_a_jump_is_re_read_from_the_first_missing_offset() -> None:
    guard = OffsetGuard()
    guard.reset(tp, 10)
    guard.check(tp, 10)
    assert guard.check(tp, 40) == (OffsetGuard.REREAD, 11)
    # The fetch of the same batch goes on past the jump: still not accepted.
    assert guard.check(tp, 41) == (OffsetGuard.REREAD, 11)


def test_records_found_on_the_re_read_are_delivered_in_order() -> None:
    guard = OffsetGuard()
    guard.reset(tp, 10)
    guard.check(tp, 10)
    guard.check(tp, 40)
    guard.reset(tp, 11)  # the consumer sought back
    assert [guard.check(tp, o)[0] for o in range(11, 42)] == [OffsetGuard.ACCEPT] * 31
    assert guard.confirmed_gaps == 0


def test_a_fresh_fetch_that_starts_past_the_missing_offsets_confirms_a_gap() -> None:
    guard = OffsetGuard()
    guard.reset(tp, 10)
    guard.check(tp, 10)
    assert guard.check(tp, 12) == (OffsetGuard.REREAD, 11)  # e.g. a commit marker
    guard.reset(tp, 11)
    guard.fetched(tp, 12)  # the broker's answer to the seek starts past 11
    assert guard.check(tp, 12) == (OffsetGuard.GAP, 11)
    assert guard.check(tp, 13) == (OffsetGuard.ACCEPT, 13)
    assert (guard.rereads, guard.confirmed_gaps) == (1, 1)


def test_a_record_of_the_same_fetch_never_confirms_a_gap() -> None:
    # Records already fetched from a stale position must not vouch for themselves.
    guard = OffsetGuard()
    guard.reset(tp, 10)
    guard.check(tp, 40)
    assert guard.check(tp, 40)[0] == OffsetGuard.REREAD


def test_records_dropped_after_the_re_read_make_a_new_jump_not_a_gap() -> None:
    # CI: partition 3 jumped from 1124 to 1158 and was re-read; the fetch from 1124 was
    # dropped on the way (the flow had stopped), the next one started at 1190. Taking 1190 as
    # confirming 1124..1189 empty lost 66 records.
    guard = OffsetGuard()
    guard.reset(tp, 1124)
    assert guard.check(tp, 1158) == (OffsetGuard.REREAD, 1124)
    guard.reset(tp, 1124)
    guard.fetched(tp, 1124)  # the broker had the records; they never reached check
    guard.fetched(tp, 1190)
    assert guard.check(tp, 1190) == (OffsetGuard.REREAD, 1124)
    assert guard.confirmed_gaps == 0


def test_a_gap_is_only_where_the_brokers_fetch_started() -> None:
    guard = OffsetGuard()
    guard.reset(tp, 10)
    guard.check(tp, 12)
    guard.reset(tp, 10)
    guard.fetched(tp, 12)  # 10..11 hold no records
    assert guard.check(tp, 15) == (OffsetGuard.REREAD, 10)  # 12..14 were dropped on the way
    guard.reset(tp, 10)
    guard.fetched(tp, 12)
    assert guard.check(tp, 12) == (OffsetGuard.GAP, 10)


def test_a_seek_elsewhere_cancels_a_pending_verification() -> None:
    guard = OffsetGuard()
    guard.reset(tp, 10)
    guard.check(tp, 40)
    guard.reset(tp, 5)  # Faust sought to the committed offset (a rebalance)
    assert guard.check(tp, 40) == (OffsetGuard.REREAD, 5)


def test_partitions_are_independent_and_unknown_positions_accept() -> None:
    guard = OffsetGuard()
    guard.reset(tp, 10)
    assert guard.check(other, 500)[0] == OffsetGuard.ACCEPT
    assert guard.check(tp, 11)[0] == OffsetGuard.REREAD
    guard.forget([tp])
    assert guard.check(tp, 99)[0] == OffsetGuard.ACCEPT


def test_lower_offsets_are_left_to_faust() -> None:
    guard = OffsetGuard()
    guard.reset(tp, 10)
    guard.check(tp, 10)
    assert guard.check(tp, 3) == (OffsetGuard.ACCEPT, 3)
    assert guard.expected[tp] == 11


@pytest.mark.parametrize("found", ["0.15.3", "0.15.9", "0.15.3.post1"])
def test_tested_faust_versions_pass_quietly(found: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_faust_version(found)


@pytest.mark.parametrize("found", ["0.14.9", "0.16.0", "1.0"])
def test_other_faust_versions_warn(found: str) -> None:
    with pytest.warns(FaustVersionWarning, match=found):
        check_faust_version(found)


def test_the_first_offset_read_without_a_known_position_is_the_origin() -> None:
    guard = OffsetGuard()
    assert guard.check(tp, 0)[0] == OffsetGuard.ACCEPT
    guard.check(tp, 1)
    guard.reset(tp, None)  # a rebalance with nothing committed: position unknown again
    guard.check(tp, 500)
    assert guard.origin[tp] == 0  # not 500: re-reading must start at the first record read
    guard.forget([tp])  # revoked (Faust revokes all at every rebalance): the origin stays
    assert guard.origin[tp] == 0 and tp not in guard.expected
