"""The cluster view's records and table, on a virtual clock."""

from __future__ import annotations

import json

import pytest

from faust_backpressure.app.cluster import (
    FORGET_AFTER,
    STALE_AFTER,
    ClusterView,
    WorkerStatusRecord,
    worker_body,
    worker_key,
)
from faust_backpressure.wire.signing import RejectedRecord

STATE = {"pipelines": {"orders": {"consumed": 10, "produced": 9, "dead_lettered": 1,
                                  "source_lag": 3, "paused": False},
                       "bulk": {"consumed": 5, "produced": 5, "dead_lettered": 0,
                                "source_lag": None, "paused": False,
                                "batch": {"latency": {"count": 2, "p99": 0.25}}}},
         "limiters": {"api": {"rate": 200.0}, "free": {"rate": float("inf")}},
         "downstreams": {"pay": {"breaker": "closed"}}}


def record(worker: str, at: float, secret: bytes | None = b"k") -> WorkerStatusRecord:
    body = worker_body(STATE, worker, {"api"}, "http://w:6066/backpressure/ui", at)
    return WorkerStatusRecord.decode(WorkerStatusRecord.encode(body, secret),
                                     worker_key(worker), secret)


def test_a_summary_round_trips_signed_and_unlimited_rates_become_none() -> None:
    got = record("w1", 100.0)
    assert (got.worker, got.at) == ("w1", 100.0)
    assert got.body["limiters"] == {"api": {"rate": 200.0, "owned": True},
                                    "free": {"rate": None, "owned": False}}
    assert got.body["pipelines"]["orders"] == {"consumed": 10, "produced": 9,
                                               "dead_lettered": 1, "source_lag": 3,
                                               "paused": False, "batch_p99": None}
    # a batch pipeline's p99 batch latency (what `backpressure status` shows)
    assert got.body["pipelines"]["bulk"]["batch_p99"] == 0.25
    older = worker_body(STATE, "w0", set(), None, 100.0)
    del older["pipelines"]["bulk"]["batch_p99"]  # a worker from before the field
    decoded = WorkerStatusRecord.decode(WorkerStatusRecord.encode(older, None), worker_key("w0"))
    assert decoded.body["pipelines"]["bulk"]["batch_p99"] is None
    assert got.body["downstreams"] == {"pay": "closed"}


def test_forged_malformed_and_out_of_range_summaries_are_rejected() -> None:
    body = worker_body(STATE, "w1", set(), None, 100.0)
    raw = WorkerStatusRecord.encode(body, b"k")
    with pytest.raises(RejectedRecord):
        WorkerStatusRecord.decode(raw, worker_key("w1"), b"other")  # wrong secret
    with pytest.raises(RejectedRecord):
        WorkerStatusRecord.decode(raw, worker_key("w2"), b"k")  # another worker's key
    for bad in ({"pipelines": {"o": {"consumed": -1, "produced": 0, "dead_lettered": 0}}},
                {"pipelines": []}, {"at": float("nan")}, {"limiters": {"a": {"rate": 1e20}}},
                {"pipelines": {"o": {"consumed": 0, "produced": 0, "dead_lettered": 0,
                                     "batch_p99": -1.0}}}):
        forged = {**json.loads(WorkerStatusRecord.encode(body, None)), **bad}
        with pytest.raises(RejectedRecord):
            WorkerStatusRecord.decode(json.dumps(forged).encode(), worker_key("w1"))


def test_workers_not_heard_from_are_marked_stale_then_forgotten() -> None:
    view = ClusterView()
    view.update(record("w2", 100.0))
    view.update(record("w1", 100.0))
    view.update(record("w1", 90.0))  # a replayed older summary changes nothing
    rows = view.rows(101.0)
    assert [(r["worker"], r["age"], r["stale"]) for r in rows] == [("w1", 1.0, False),
                                                                   ("w2", 1.0, False)]
    assert [r["stale"] for r in view.rows(100.0 + STALE_AFTER + 1)] == [True, True]
    view.forget("w2")  # its tombstone
    assert [r["worker"] for r in view.rows(101.0)] == ["w1"]
    assert view.rows(100.0 + FORGET_AFTER + 1) == []
