"""Keyed limits for operators, without a broker: override records (signed, range-checked),
the refused-keys counter, the status records and their sums, the page and the metrics."""

from __future__ import annotations

import json

import faust
import pytest

from faust_backpressure.agents.keyed import encode_key
from faust_backpressure.agents.keyed_store import RefusedKeys, describe_key
from faust_backpressure.app import Backpressure
from faust_backpressure.app.dashboard import compact
from faust_backpressure.app.keyed_ops import (
    KeyedStatusRecord,
    KeyOverrideCommand,
    override_key,
    parse_key,
    status_body,
)
from faust_backpressure.app.ops import keyed_overrides, keyed_status
from faust_backpressure.app.views import render_prometheus, snapshot
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.limiters.keyed_buckets import KeyLimits
from faust_backpressure.wire.signing import RejectedRecord, canonical, encode_signed

SECRET = b"s" * 32


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_override_round_trips_signed_and_a_forged_or_unsigned_one_is_rejected() -> None:
    command = KeyOverrideCommand.new("per-customer", "C42", 100.0, None, "ops@host", "vip")
    assert command.burst == 100.0  # one second of the rate, as the limit's default
    assert command.key_record == override_key("per-customer", encode_key("C42"))
    raw = command.encode(SECRET)
    back = KeyOverrideCommand.decode(raw, command.key_record, SECRET)
    assert back == command and back.limits == KeyLimits(100.0, 100.0)
    assert back.shown_key == "C42"
    with pytest.raises(RejectedRecord):  # unsigned, where the app has a secret
        KeyOverrideCommand.decode(command.encode(None), command.key_record, SECRET)
    with pytest.raises(RejectedRecord):  # signed with another secret
        KeyOverrideCommand.decode(command.encode(b"x" * 32), command.key_record, SECRET)
    with pytest.raises(RejectedRecord):  # moved to another key's record
        KeyOverrideCommand.decode(raw, override_key("per-customer", encode_key("C7")), SECRET)
    cleared = KeyOverrideCommand.new("per-customer", "C42", None, None, "ops@host")
    assert KeyOverrideCommand.decode(cleared.encode(SECRET), cleared.key_record,
                                     SECRET).limits is None


@pytest.mark.parametrize("change", [{"rate": -1}, {"rate": 1e13}, {"rate": "fast"},
                                    {"burst": 0}, {"at": -5}, {"target": "per-customer/zz"},
                                    {"type": "pause"}])
def test_an_override_out_of_range_is_rejected(change: dict[str, object]) -> None:
    body = {"type": "key-override", "target": f"per-customer/{encode_key('C1').hex()}",
            "rate": 5.0, "burst": 5.0, "id": "x", "by": "me", "at": 1.0, "reason": "",
            **change}
    key = b"keyed/" + str(body["target"]).encode()
    with pytest.raises(RejectedRecord):
        KeyOverrideCommand.decode(encode_signed(dict(body), key, SECRET), key, SECRET)


def test_new_refuses_bad_values_before_anything_is_sent() -> None:
    for rate, burst in ((0.0, None), (1e13, None), (5.0, -1.0)):
        with pytest.raises(ValueError):
            KeyOverrideCommand.new("l", "k", rate, burst, "me")
    with pytest.raises(ValueError):
        KeyOverrideCommand.new("l", "k" * 2000, 1.0, None, "me")
    assert parse_key("7", "int") == 7 and parse_key("7", "bytes") == b"7"
    assert describe_key(encode_key(b"ab\xff")) == "ab\\xff"
    assert describe_key(encode_key(7)) == "7"


def test_refused_keys_are_counted_over_two_windows_and_memory_stays_bounded() -> None:
    refused = RefusedKeys(window=60.0, capacity=4)
    for _ in range(5):
        refused.count("hot", 0.0)
    refused.count("warm", 1.0)
    refused.count("warm", 2.0)
    assert refused.top(2, 3.0) == [("hot", 5), ("warm", 2)]
    refused.count("warm", 61.0)  # a new window: the previous one still counts
    assert refused.top(2, 61.0) == [("hot", 5), ("warm", 3)]
    assert refused.top(2, 125.0) == [("warm", 1)]  # only the last window's
    assert refused.top(2, 300.0) == []  # two quiet windows: nothing lately
    for key in ("a", "b", "c", "d"):
        refused.count(key, 300.0)
    refused.count("a", 300.0)
    refused.count("e", 300.0)  # full: the keys refused once make room
    assert dict(refused.top(10, 300.0)) == {"a": 2, "e": 1}


def _bp() -> Backpressure:
    app = faust.App("keyed-ops-unit", broker="kafka://127.0.0.1:1")
    return Backpressure(app, settings=BackpressureSettings(secret=SECRET.decode()))


def test_status_records_are_signed_summed_over_fresh_workers_and_list_the_top_keys() -> None:
    bp = _bp()
    clock = Clock()
    gate = bp.rate_limit_per_key("per-customer", tokens_per_second=10, burst_capacity=20,
                                 partitions=2, store="memory://")
    gate.clock = clock
    gate.operator_limits[encode_key("C9")] = KeyLimits(50, 50)
    for _ in range(3):
        gate.refused_keys.count("C9", clock.now)
    gate.refused_keys.count("C1", clock.now)
    gate.admitted, gate.deferred = 100, 10
    first = status_body(gate, "w1:1", None, clock.now)
    gate.admitted += 50
    second = status_body(gate, "w1:1", first, clock.now + 5)
    assert second["admitted_per_s"] == 10.0 and second["deferred_per_s"] == 0.0
    assert second["top_limited"][0] == {"key": "C9", "type": "str", "refused": 3,
                                         "limits": {"rate": 50.0, "burst": 50.0}}
    other = {**second, "target": "per-customer/w2:2", "worker": "w2:2", "admitted": 7,
             "top_limited": [{"key": "C1", "type": "str", "refused": 9, "limits": None}]}
    stale = {**second, "target": "per-customer/w3:3", "worker": "w3:3", "at": 0.0}
    forged = {**second, "target": "per-customer/thief:1", "worker": "thief:1"}
    override = KeyOverrideCommand.new("per-customer", "C9", 50.0, None, "me")
    ops = {}
    for body, secret in ((second, SECRET), (other, SECRET), (stale, SECRET), (forged, None)):
        key = "keyed-status/" + body["target"]
        ops[key] = json.loads(KeyedStatusRecord.encode(body, secret))
    ops[override.key_record.decode()] = json.loads(override.encode(SECRET))
    now = clock.now + 6
    (row,) = keyed_status(bp, ops, now)
    assert row["workers"] == 2  # the stale and the unsigned ones do not count
    assert row["admitted"] == 157 and row["rate"] == 10.0 and row["burst"] == 20.0
    assert row["key_overrides"] == 1 and row["key_types"] == ["str"]
    assert [(t["key"], t["refused"]) for t in row["top_limited"]] == [("C1", 10), ("C9", 3)]
    assert [c.shown_key for c in keyed_overrides(ops, "per-customer", SECRET)] == ["C9"]
    assert canonical(ops["keyed-status/per-customer/w1:1"]) == KeyedStatusRecord.encode(
        second, SECRET)


def test_the_page_and_the_metrics_show_each_keyed_limit_without_key_labels() -> None:
    bp = _bp()
    gate = bp.rate_limit_per_key("per-customer", tokens_per_second=10, burst_capacity=20,
                                 partitions=2, store="memory://")
    gate.operator_limits[encode_key("C9")] = KeyLimits(50, 50)
    gate.refused_keys.count("C9", gate.clock())
    state = snapshot(bp)
    keyed = state["keyed"]["per-customer"]
    assert keyed["overrides"] == 1 and keyed["top_limited"][0]["key"] == "C9"
    assert compact(state)["keyed"]["per-customer"] == {"admitted": 0, "deferred": 0,
                                                       "readmitted": 0, "held_back": 0,
                                                       "shed": 0, "waits": 0,
                                                       "overdrafts": 0}
    text = render_prometheus(state)
    assert 'faust_backpressure_keyed_rate{app="keyed-ops-unit",limit="per-customer"} 10.0' \
        in text.splitlines()
    assert 'faust_backpressure_keyed_burst{app="keyed-ops-unit",limit="per-customer"} 20.0' \
        in text.splitlines()
    assert "C9" not in text  # keys are never labels
    assert gate.limits_for("C9") == KeyLimits(50, 50)  # the operator's wins


class _Message:
    offset = 7

    def incref(self) -> None:
        pass


def test_deferred_events_held_back_show_in_stats_metrics_status_and_the_page() -> None:
    bp = _bp()
    clock = Clock()
    gate = bp.rate_limit_per_key("per-customer", tokens_per_second=10, partitions=2,
                                 store="memory://")
    gate.clock = gate.deferrals.clock = clock
    gate.deferrals._open()  # the deferral agent runs
    first = status_body(gate, "w1:1", None, clock.now)
    for _ in range(3):  # back before their time: held in the deferral agent again
        assert gate.deferrals.hold("C1", type("Event", (), {"message": _Message()})(),
                                   clock.now + 1)
    assert gate.stats().held_back == 3
    state = snapshot(bp)
    assert state["keyed"]["per-customer"]["held_back"] == 3
    assert compact(state)["keyed"]["per-customer"]["held_back"] == 3
    assert ('faust_backpressure_keyed_held_back_total{app="keyed-ops-unit",'
            'limit="per-customer"} 3.0') in render_prometheus(state).splitlines()
    second = status_body(gate, "w1:1", first, clock.now + 5)
    assert second["held_back"] == 3 and second["held_back_per_s"] == 0.6
    ops = {"keyed-status/" + second["target"]: json.loads(KeyedStatusRecord.encode(second,
                                                                                 SECRET))}
    (row,) = keyed_status(bp, ops, clock.now + 6)
    assert row["workers"] == 1
    assert row["held_back"] == 3 and row["held_back_per_s"] == 0.6
