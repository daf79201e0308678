"""``dlq-inspect`` without Kafka: DLQ records in -> counts, first/last, a sample, the output."""

from __future__ import annotations

import json
import re
from typing import Any

from aiokafka import ConsumerRecord

from faust_backpressure.agents import headers as h
from faust_backpressure.app.dlq_inspect import DlqSummary, budgets, render, short, text

T0 = 1_700_000_000.0


def _record(offset: int, *, kind: type[Exception] = ValueError, stage: str = "process",
            pipeline: str = "orders", partition: int = 0, at: float = T0,
            headers: list[tuple[str, bytes]] | None = None,
            value: bytes = b"id-1") -> ConsumerRecord[Any, Any]:
    if headers is None:
        try:
            raise kind(f"refused {offset}")
        except Exception as exc:  # a real traceback in bp.error.traceback
            failure = h.Failure(exc, stage, 2, at - 5, at - 1)
        headers = h.dlq_headers([("trace-id", b"t%d" % offset)], pipeline=pipeline,
                                topic="orders", partition=partition, offset=offset,
                                failure=failure, traceback_limit=2000)
    return ConsumerRecord("orders-dlq", partition, offset, int(at * 1000), 0, b"k", value, None,
                          1, len(value), headers)


def _records() -> list[ConsumerRecord[Any, Any]]:
    records = [_record(i, at=T0 + i, partition=i % 2) for i in range(6)]          # 6 ValueError
    records += [_record(10 + i, kind=KeyError, stage="sink", at=T0 + 100 + i) for i in range(2)]
    records.append(_record(20, pipeline="billing", at=T0 - 1000))                # not ours
    records.append(_record(21, at=T0 + 50, headers=[                             # undecodable
        (h.ERROR_TYPE, b"\xff\xfeBad"), (h.FIRST_FAILURE, b"\x00not a time"),
        (h.PIPELINE, b"orders"), ("bp.extra", b"\x80")]))
    records.append(_record(22, at=T0 + 60, headers=[], value=b"x" * 500))       # no headers
    return records


def test_counts_by_error_type_and_stage_first_and_last_and_other_pipelines() -> None:
    summary = DlqSummary("orders", "orders-dlq", sample_size=5).add_all(_records())
    assert summary.counted == 10 and summary.other_pipelines == 1 and summary.read == 11
    assert summary.by_error_type == {"ValueError": 6, "KeyError": 2, "?": 1,
                                     repr(b"\xff\xfeBad"): 1}
    assert summary.by_stage == {"process": 6, "sink": 2, "?": 2}
    out = summary.to_json()
    # Kafka timestamps: the billing record (T0 - 1000) is not counted
    assert out["kafka_timestamps"] == {"first": "2023-11-14T22:13:20.000+00:00",
                                       "last": "2023-11-14T22:15:01.000+00:00"}
    # headers: the earliest bp.first_failure (T0 - 5), the latest bp.last_failure (T0 + 100)
    assert out["failures"] == {"first": "2023-11-14T22:13:15.000+00:00",
                               "last": "2023-11-14T22:15:00.000+00:00"}
    json.dumps(out)  # serializable


def test_the_sample_has_one_of_each_error_type_first_then_the_newest() -> None:
    summary = DlqSummary("orders", "orders-dlq", sample_size=5).add_all(_records())
    sample = summary.sample
    assert len(sample) == 5
    kinds = [s["headers"].get(h.ERROR_TYPE, "?") for s in sample]
    assert set(kinds) == {"ValueError", "KeyError", "?", repr(b"\xff\xfeBad")}
    assert [s["timestamp"] for s in sample] == sorted(s["timestamp"] for s in sample)
    # the most frequent type's newest records fill the rest; the billing record never shows
    assert {s["offset"] for s in sample
            if s["headers"].get(h.ERROR_TYPE) == "ValueError"} == {4, 5}
    odd = next(s for s in sample if s["offset"] == 21)
    assert odd["headers"]["bp.extra"] == repr(b"\x80")
    assert "trace-id" not in next(s for s in sample if s["offset"] == 5)["headers"]
    blob = next(s for s in sample if s["offset"] == 22)
    assert blob["value"] == repr(b"x" * 60) + "..." and blob["headers"] == {}
    assert DlqSummary("orders", "d", sample_size=0).add_all(_records()).sample == []
    assert len(DlqSummary("orders", "d", sample_size=50).add_all(_records()).sample) == 10


def test_the_plain_form_shows_counts_timestamps_and_truncated_headers() -> None:
    summary = DlqSummary("orders", "orders-dlq", sample_size=3, partitions=2, in_topic=11,
                         max_records=10_000).add_all(_records())
    shown = render(summary)
    assert "counted all 11 records (2 partition(s))" in shown
    assert "passed over 1 record(s) of other pipelines" in shown
    assert re.search(r"^ValueError +6$", shown, re.M) and re.search(r"^sink +2$", shown, re.M)
    # a traceback shows its end; the record's own headers are not shown
    assert re.search(r"^    bp.error.traceback: .*ValueError: refused 5$", shown, re.M)
    assert "trace-id" not in shown
    assert max(len(line) for line in shown.splitlines()) < 200
    summary.bounded, summary.in_topic, summary.max_records = True, 1_234_567, 11
    assert "counted 11 of 1,234,567 records" in render(summary)


def test_an_empty_or_missing_dlq_and_a_dlq_of_other_pipelines() -> None:
    assert render(DlqSummary("orders", "o-dlq", exists=False)) == (
        "DLQ o-dlq of pipeline orders is empty (the topic does not exist)")
    assert render(DlqSummary("orders", "o-dlq", partitions=3)) == (
        "DLQ o-dlq of pipeline orders is empty")
    other = DlqSummary("orders", "o-dlq", partitions=1, in_topic=1).add_all(
        [_record(1, pipeline="billing")])
    assert "no record of pipeline orders among them" in render(other)


def test_budgets_spread_the_newest_records_over_the_partitions() -> None:
    assert budgets({0: 100, 1: 100, 2: 100}, 30) == {0: 10, 1: 10, 2: 10}
    # what a small partition does not need goes to the bigger ones; never more than asked
    assert budgets({0: 2, 1: 1000, 2: 1000}, 30) == {0: 2, 1: 14, 2: 14}
    assert budgets({0: 5, 1: 1000, 2: 1000, 3: 1000}, 3) == {0: 1, 1: 1, 2: 1, 3: 0}
    assert budgets({0: 5, 1: 7}, 10_000) == {0: 5, 1: 7}
    assert budgets({0: 0}, 10) == {0: 0} and budgets({}, 10) == {}
    assert sum(budgets({p: 1_000_000 for p in range(7)}, 10_000).values()) == 10_000


def test_header_values_never_raise() -> None:
    assert text(b"ValueError") == "ValueError" and text(b"\xff") == repr(b"\xff")
    assert text(None) == "None"
    assert short(None) == "None" and short(b"ab") == "b'ab'" and short(b"a" * 3, 2) == "b'aa'..."
