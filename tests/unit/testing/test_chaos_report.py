"""The chaos report: a run's table row and its problems, from a result built by hand."""

from __future__ import annotations

from faust_backpressure.testing.chaos import (
    ChaosPlan,
    ChaosResult,
    Fault,
    FaultReport,
    LostId,
    format_table,
)


def test_a_lost_id_and_an_outage_without_progress_fail_the_run() -> None:
    plan = ChaosPlan.ci("at_least_once")
    outage = FaultReport(Fault("outage", 0.6), progress=0.6, injected_at=110.0,
                         restarted_at=120.0)
    result = ChaosResult(plan, "abc123", records_in=10_000, out_records=9_800, dlq_records=199,
                         lost=[LostId("r000042", 3, 17, 20)], faults=[outage],
                         bound={1.0: (1000, 1000.0)}, started=100.0)
    problems = result.problems()
    assert problems[0].startswith("1 ids lost") and "r000042@p3:17 (committed 20)" in problems[0]
    assert problems[1] == "processing did not resume after broker down 10 s @60%"
    table = format_table([result]).splitlines()
    assert "at_least_once (commit abc123, seed 0, t=0 at" in table[3] + table[4]
    assert "faults broker down 10 s @60% (t=10.0 s, back t=20.0 s)" in table[3] + table[4]
    row = table[2].split(" | ")
    assert row[0] == "| at_least_once" and row[5] == "1" and row[-1] == "FAIL |"
    assert "- limiter 500/s burst 500; most admitted in any window: 1 s 1000/1000" in table


def test_a_clean_run_passes() -> None:
    result = ChaosResult(ChaosPlan.ci("exactly_once"), "abc123", records_in=10, out_records=10)
    assert result.problems() == []
    assert format_table([result]).splitlines()[2].endswith("| pass |")
