"""The chaos report: a run's table rows (one per pipeline) and its problems, from a result built
by hand."""

from __future__ import annotations

from faust_backpressure.testing.chaos import (
    ChaosPlan,
    ChaosResult,
    Fault,
    FaultReport,
    LostId,
    PipelineResult,
    format_table,
)


def test_a_lost_id_and_an_outage_without_progress_fail_the_run() -> None:
    plan = ChaosPlan.ci("at_least_once")
    outage = FaultReport(Fault("outage", 0.6), progress=0.6, injected_at=110.0,
                         restarted_at=120.0)
    event = PipelineResult(records_in=3_000, out_records=2_900, dlq_records=99,
                           lost=[LostId("e000042", 3, 17, 20)])
    batch = PipelineResult(records_in=3_000, out_records=2_900, dlq_records=100,
                           duplicates={"b000001": 1})
    result = ChaosResult(plan, "abc123", pipelines={"event": event, "batch": batch},
                         faults=[outage], bound={1.0: (1000, 1000.0)}, started=100.0)
    problems = result.problems()
    assert problems[0].startswith("event: 1 ids lost")
    assert "e000042@p3:17 (committed 20)" in problems[0]
    assert problems[1] == "processing did not resume after broker down 10 s @60%"
    assert len(problems) == 2  # at_least_once: the batch pipeline's duplicate is allowed
    table = format_table([result]).splitlines()
    assert "at_least_once, event + batch (commit abc123, seed 0, t=0 at" in table[5]
    assert "faults broker down 10 s @60% (t=10.0 s, back t=20.0 s)" in table[5]
    event_row, batch_row = table[2].split(" | "), table[3].split(" | ")
    assert event_row[:3] == ["| at_least_once", "event", "3000"]
    assert event_row[6] == "1" and event_row[-1] == "FAIL |"
    assert batch_row[1] == "batch (100)" and batch_row[7] == "1" and batch_row[-1] == "FAIL |"
    assert ("- limiter 500/s burst 500, shared by the pipelines; most admitted in any window: "
            "1 s 1000/1000") in table
    assert "- batch: 1 ids duplicated (at_least_once, allowed): " in table


def test_a_pipeline_passes_on_its_own_and_a_clean_run_passes() -> None:
    plan = ChaosPlan.ci("exactly_once")
    dup = PipelineResult(records_in=10, out_records=11, duplicates={"b000003": 1})
    result = ChaosResult(plan, "abc123", pipelines={"event": PipelineResult(10, 10), "batch": dup})
    assert result.problems() == ["batch: 1 ids duplicated in exactly_once (OUT read committed): "]
    rows = format_table([result]).splitlines()[2:4]
    assert rows[0].endswith("| pass |") and rows[1].endswith("| FAIL |")
    clean = ChaosResult(plan, "abc123", pipelines={"event": PipelineResult(10, 10),
                                                   "batch": PipelineResult(10, 10)})
    assert clean.problems() == []
    assert all(row.endswith("| pass |") for row in format_table([clean]).splitlines()[2:4])


def test_records_are_split_between_the_pipelines_with_their_own_ids() -> None:
    plan = ChaosPlan.ci("at_least_once")
    assert plan.records == 6_000 and plan.per_pipeline == 3_000
    assert plan.record(7, "event")[0] == b"e000007" and plan.record(7, "batch")[0] == b"b000007"
    assert plan.is_failing(7) and plan.is_not_json(3)


def test_a_good_record_in_the_dlq_fails_and_the_guard_is_reported() -> None:
    plan = ChaosPlan.ci("exactly_once")
    assert plan.downstream_quota == 150.0
    event = PipelineResult(10, 9, 1, misrouted={"e000001": "process: 429 slow down"})
    result = ChaosResult(plan, "abc123", pipelines={"event": event,
                                                    "batch": PipelineResult(10, 10)},
                         downstream={"ok": 12, "rejected_429": 3, "pauses": 2,
                                     "overdrafts": 1})
    assert result.problems() == ["event: 1 good records dead-lettered: "
                                 "e000001: process: 429 slow down"]
    table = format_table([result]).splitlines()
    assert table[2].endswith("| FAIL |") and table[3].endswith("| pass |")
    assert ("- downstream guard on the event pipeline, quota 150/s: 12 calls served, 3 "
            "answered 429, 2 slow-down pauses, 1 calls let go without permits at a flow "
            "stop") in table
