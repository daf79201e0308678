"""Chaos, CI-sized: two rate-limited pipelines on 3 real workers through a SIGKILL and a broker
outage, one test per processing mode.

One run drives both pipelines at once under the same distributed limiter: the per-event one
(``process=``) on source A -> sink A (+ DLQ A) and the batch one (``process_batch=``, batches
of 100; docs/batching.md) on source B -> sink B (+ DLQ B), 3,000 records each. The scenario lives
in :mod:`faust_backpressure.testing.chaos` (``make chaos`` runs it at full size). Pass, per
pipeline: no id lost (each in its OUT or its DLQ), no duplicate in exactly_once (at_least_once
duplicates are reported), every bad record in its DLQ with its reason; and for the run: the
limiter's bound held over every window of both pipelines' admissions together, processing
resumed after the outage.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from faust_backpressure.testing.broker import LocalKafkaBroker
from faust_backpressure.testing.chaos import ChaosPlan, Guarantee, format_table, run_chaos

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(280)]


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_nothing_lost_by_either_pipeline_through_a_worker_kill_and_a_broker_outage(
        own_broker: LocalKafkaBroker, tmp_path: Path, guarantee: Guarantee,
        capsys: pytest.CaptureFixture[str]) -> None:
    plan = ChaosPlan.ci(guarantee)
    assert plan.pipelines == ("event", "batch") and plan.batch_size == 100
    result = await run_chaos(plan, own_broker, tmp_path)
    table = format_table([result])
    with capsys.disabled():
        print(f"\n{table}\n(worker logs: {result.workdir})")
    assert [f.fault.kind for f in result.faults] == ["kill", "outage"], table
    assert set(result.pipelines) == {"event", "batch"}, table
    for name, pipeline in result.pipelines.items():
        assert pipeline.records_in == plan.per_pipeline, f"{name}\n{table}"
    assert not result.problems(), table + "\n" + "\n".join(result.problems())
    # the event pipeline's guard met the quota service's 429s (positive signs), and every
    # good record is in OUT all the same (above: none dead-lettered)
    assert result.downstream is not None, table
    assert result.downstream["rejected_429"] > 0 and result.downstream["pauses"] > 0, table
    assert result.downstream["ok"] >= result.pipelines["event"].out_records, table  # 1 call each
