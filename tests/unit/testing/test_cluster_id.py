"""The harness's KRaft cluster ids: never read by Kafka's StorageTool as an option."""

from __future__ import annotations

import base64

import pytest

from faust_backpressure.testing.broker import _cluster_id

ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _valid(cluster_id: str) -> None:
    assert len(cluster_id) == 22
    assert set(cluster_id) <= ALPHABET
    assert not cluster_id.startswith(("-", "_"))
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16  # Kafka's Uuid.fromString


def test_many_random_ids_are_valid_and_distinct() -> None:
    ids = [_cluster_id() for _ in range(20_000)]  # ~312 would start with '-' before the fix
    for cluster_id in ids:
        _valid(cluster_id)
    assert len(set(ids)) == len(ids)
    assert len({i[0] for i in ids}) == 32  # the first character still varies: A..Z, a..f


@pytest.mark.parametrize("first", range(256))
def test_no_first_byte_can_give_a_leading_dash(first: int) -> None:
    # Exhaustive over what decides the first character (the first byte's top 6 bits),
    # including 0xF8-0xFB, which base64url encodes as a leading '-' (and 0xFC-0xFF as '_').
    for rest in (b"\x00" * 15, b"\xff" * 15, bytes(range(15))):
        _valid(_cluster_id(bytes([first]) + rest))


def test_the_unfixed_scheme_did_start_with_a_dash() -> None:
    # The regression this guards against: plain base64url of such bytes starts with '-'.
    raw = b"\xf8" + b"\x00" * 15
    assert base64.urlsafe_b64encode(raw).decode().startswith("-")
    assert not _cluster_id(raw).startswith("-")


def test_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError):
        _cluster_id(b"\x00" * 15)
