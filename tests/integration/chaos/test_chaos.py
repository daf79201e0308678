"""Chaos, CI-sized: a rate-limited pipeline on 3 real workers through a SIGKILL and a broker outage.

The scenario lives in :mod:`faust_backpressure.testing.chaos` (``make chaos`` runs it at full
size). Pass: no id lost (each in OUT or the DLQ), no duplicate in exactly_once (at_least_once
duplicates are reported), every bad record in the DLQ with its reason, the limiter's bound held
over every window, processing resumed after the outage.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from faust_backpressure.testing.broker import LocalKafkaBroker
from faust_backpressure.testing.chaos import ChaosPlan, Guarantee, format_table, run_chaos

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(280)]


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_nothing_lost_through_a_worker_kill_and_a_broker_outage(
        own_broker: LocalKafkaBroker, tmp_path: Path, guarantee: Guarantee,
        capsys: pytest.CaptureFixture[str]) -> None:
    plan = ChaosPlan.ci(guarantee)
    result = await run_chaos(plan, own_broker, tmp_path)
    table = format_table([result])
    with capsys.disabled():
        print(f"\n{table}\n(worker logs: {result.workdir})")
    injected = [f.fault.kind for f in result.faults]
    assert injected == ["kill", "outage"], table
    assert not result.problems(), table + "\n" + "\n".join(result.problems())


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_batch_pipeline_loses_nothing_through_a_worker_kill_and_a_broker_outage(
        own_broker: LocalKafkaBroker, tmp_path: Path, guarantee: Guarantee,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The same scenario and pass criteria, the pipeline in batch mode (docs/batching.md)."""
    plan = dataclasses.replace(ChaosPlan.ci(guarantee), batch=100)
    result = await run_chaos(plan, own_broker, tmp_path)
    table = format_table([result])
    with capsys.disabled():
        print(f"\nbatch mode:\n{table}\n(worker logs: {result.workdir})")
    assert [f.fault.kind for f in result.faults] == ["kill", "outage"], table
    assert not result.problems(), table + "\n" + "\n".join(result.problems())
