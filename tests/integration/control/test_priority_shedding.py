"""Priority-based load shedding on the real broker, both processing modes: under critical
downstream lag the lowest priorities go to the shed topic (reason and priority in headers),
the others are processed; every input is in the sink, the shed topic or the DLQ."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import pytest

from faust_backpressure.agents import headers as h
from faust_backpressure.app import Backpressure
from faust_backpressure.app.views import render_prometheus, snapshot
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.control import BackpressureThresholds, ShedLevels
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import (
    commit_offsets,
    consume,
    create_topics,
    end_offsets,
    produce,
)
from faust_backpressure.testing.settings import fast_faust_settings
from tests.integration.agents.helpers import committed_to_the_end

pytestmark = pytest.mark.kafka

# Critical above a lag of 200 records; the emergency rate is kept high (100/s) so that the
# priorities that are not shed are processed quickly in the test (near zero by default).
THRESHOLDS = BackpressureThresholds(backlog_cleared_lag=10, scaling_threshold=50,
                                    max_consumer_lag=100, critical_lag=200, cpu_threshold=1.0,
                                    emergency_rate=100.0)


class Job(faust.Record, serializer="json"):
    id: str
    priority: int


async def eventually(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)



def job_records() -> tuple[list[tuple[str, int]], list[tuple[bytes, bytes]]]:
    """150 jobs (name, priority 0-2) and their records, then one undecodable record."""
    jobs = [(f"j{i:03d}", i % 3) for i in range(150)]
    records = [(name.encode(), json.dumps({"id": name, "priority": p}).encode())
               for name, p in jobs] + [(b"broken", b"{not json")]
    return jobs, records


@dataclass
class CriticalLag:
    """An app whose control loop sees a critical downstream lag, with its topics."""

    downstream: str
    group: str
    source: str
    sink: str
    dlq: str
    shed_topic: str
    app: faust.App
    bp: Backpressure
    limiter: TokenBucketRateLimiter


async def critical_lag(kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
                       partitions: int = 2, **app_options: Any) -> CriticalLag:
    downstream, group = unique_name("priced"), unique_name("billing")
    source, sink, dlq = unique_name("src"), unique_name("sink"), unique_name("dlq")
    shed_topic = source + "-shed"
    await create_topics(kafka_bootstrap, {downstream: 1, source: partitions, sink: partitions,
                                          dlq: 1, shed_topic: partitions})
    # The downstream group has read none of 300 records: lag 300 > critical 200.
    await produce(kafka_bootstrap, downstream, ((None, b"order") for _ in range(300)))
    # the group has started and read nothing (committed 0): a group with no commits at
    # all would be a warning, not throttled on (docs/control-loop.md)
    await commit_offsets(kafka_bootstrap, group, downstream,
                         dict.fromkeys(await end_offsets(kafka_bootstrap, downstream), 0))
    app = faust.App(unique_name("app"), datadir=str(tmp_path), **app_options,
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}"))
    bp = Backpressure(app, settings=BackpressureSettings())
    return CriticalLag(downstream, group, source, sink, dlq, shed_topic, app, bp,
                       TokenBucketRateLimiter(200, 50))


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_critical_lag_sheds_the_lowest_priorities_and_processes_the_others(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
        guarantee: str) -> None:
    c = await critical_lag(kafka_bootstrap, unique_name, tmp_path, processing_guarantee=guarantee)
    downstream, group, source, sink, dlq, shed_topic = (c.downstream, c.group, c.source, c.sink,
                                                        c.dlq, c.shed_topic)
    app, bp, limiter = c.app, c.bp, c.limiter

    def process(job: Job) -> bytes:
        if job.id.endswith("7"):
            raise ValueError("sevens are refused")
        return job.id.encode()

    pipe = bp.pipeline("jobs", source=app.topic(source, value_type=Job), sink=sink, dlq=dlq,
                       process=process, limiter=limiter, max_retries=0,
                       priority=lambda job: job.priority)
    # Level 1 (priority 0 shed) at once; no escalation within the test; one interval to
    # relax once the lag clears.
    loop = bp.control_loop(limiter, downstream_group=group, downstream_topics=[downstream],
                           interval=0.3, thresholds=THRESHOLDS, shed_on_critical=True,
                           shed_levels=ShedLevels(levels=(1, 2), escalate_intervals=1_000,
                                                  relax_intervals=1))
    gate = pipe.gate
    assert gate is not None
    jobs, records = job_records()
    read = "read_committed"
    async with running_app(app):
        await eventually(lambda: gate.shed_threshold == 1)
        await produce(kafka_bootstrap, source, records)
        await eventually(lambda: pipe.stats.consumed + gate.shed >= len(records), timeout=30)
        shed = await consume(kafka_bootstrap, shed_topic, until=gate.shed, timeout=20,
                             isolation_level=read)
        dead = await consume(kafka_bootstrap, dlq, until=pipe.stats.dead_lettered, timeout=20,
                             isolation_level=read)
        out = await consume(kafka_bootstrap, sink, until=pipe.stats.produced, timeout=20,
                            settle=0.5, isolation_level=read)
        # The lag clears: the shed level falls (one level per interval here) to none.
        await commit_offsets(kafka_bootstrap, group, downstream,
                             await end_offsets(kafka_bootstrap, downstream))
        await eventually(lambda: gate.shed_threshold is None, timeout=10)
        assert loop.shedder.level == 0
    low = [name for name, p in jobs if p == 0]
    kept = [name for name, p in jobs if p > 0]
    # Priority 0 shed, all of it; 1 and 2 processed (sink, or the DLQ for the sevens).
    assert Counter(r.key.decode() for r in shed) == Counter(low)
    assert Counter(r.value.decode() for r in out) == Counter(n for n in kept if n[-1] != "7")
    assert Counter(r.key for r in dead) == Counter(
        [n.encode() for n in kept if n[-1] == "7"] + [b"broken"])  # undecodable: not shed
    assert len(shed) + len(out) + len(dead) == len(records)  # every input accounted for
    assert gate.shed == gate.shed_by_priority == len(low)
    for record in shed:  # why, and at which priority, travels with the record
        meta = dict(record.headers)
        assert meta[h.SHED_PRIORITY] == b"0"
        assert meta[h.SHED_REASON] == (b"load shedding: priority 0 < shed level 1 "
                                       b"(critical downstream lag)")
        assert meta[h.SOURCE_TOPIC] == source.encode()
        assert json.loads(record.value)["priority"] == 0  # the original bytes


async def test_shedding_escalates_to_higher_priorities_while_the_lag_stays_critical(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    c = await critical_lag(kafka_bootstrap, unique_name, tmp_path, partitions=1)
    downstream, group, source, sink = c.downstream, c.group, c.source, c.sink
    app, bp, limiter = c.app, c.bp, c.limiter
    pipe = bp.pipeline("jobs", source=source, sink=sink, process=lambda v: v,
                       limiter=limiter, priority=lambda value: int(value[:1]))
    loop = bp.control_loop(limiter, downstream_group=group, downstream_topics=[downstream],
                           interval=0.3, thresholds=THRESHOLDS, shed_on_critical=True,
                           shed_levels=ShedLevels(levels=(1, 2), escalate_intervals=3))
    gate = pipe.gate
    assert gate is not None
    values = [b"%d-%03d" % (i % 3, i) for i in range(90)]
    async with running_app(app):
        await eventually(lambda: gate.shed_threshold == 1)
        escalating = asyncio.get_running_loop().time()
        await eventually(lambda: gate.shed_threshold == 2)  # after 3 critical intervals
        escalated_after = asyncio.get_running_loop().time() - escalating
        await produce(kafka_bootstrap, source, ((None, v) for v in values))
        shed = await consume(kafka_bootstrap, source + "-shed", until=60, timeout=20)
        out = await consume(kafka_bootstrap, sink, until=30, timeout=20, settle=0.5)
    print(f"\nlevel 1 -> 2 after {escalated_after:.2f} s (3 intervals of 0.3 s)")
    assert 0.6 <= escalated_after <= 2.0, escalated_after
    assert loop.shedder.level == 2
    assert sorted(r.value for r in shed) == sorted(v for v in values if v[:1] in b"01")
    assert sorted(r.value for r in out) == sorted(v for v in values if v[:1] == b"2")
    assert {dict(r.headers)[h.SHED_PRIORITY] for r in shed} == {b"0", b"1"}


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_batch_pipeline_sheds_the_lowest_priorities_as_outputs_of_its_batches(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
        guarantee: str) -> None:
    """``process_batch=`` with ``priority=`` (docs/batching.md, "Priority shedding in a
    batch"): each batch's records below the level go to the shed topic with the per-event
    headers, in the batch's transaction (exactly_once) or acked before its offsets."""
    c = await critical_lag(kafka_bootstrap, unique_name, tmp_path, processing_guarantee=guarantee)
    downstream, group, source, sink, dlq, shed_topic = (c.downstream, c.group, c.source, c.sink,
                                                        c.dlq, c.shed_topic)
    app, bp, limiter = c.app, c.bp, c.limiter
    sizes: list[int] = []

    def price(jobs: list[Job]) -> list[Any]:
        sizes.append(len(jobs))
        return [ValueError("sevens are refused") if job.id.endswith("7") else job.id.encode()
                for job in jobs]

    pipe = bp.pipeline("jobs", source=app.topic(source, value_type=Job), sink=sink, dlq=dlq,
                       process_batch=price, batch_size=20, batch_timeout=0.05,
                       limiter=limiter, max_retries=0, priority=lambda job: job.priority)
    bp.control_loop(limiter, downstream_group=group, downstream_topics=[downstream],
                    interval=0.3, thresholds=THRESHOLDS, shed_on_critical=True,
                    shed_levels=ShedLevels(levels=(1, 2), escalate_intervals=1_000))
    gate, runner = pipe.gate, pipe.batch
    assert gate is not None and runner is not None
    jobs, records = job_records()
    read = "read_committed"
    async with running_app(app):
        await eventually(lambda: gate.shed_threshold == 1)
        await produce(kafka_bootstrap, source, records, headers=[("trace", b"t")])
        await eventually(lambda: pipe.stats.consumed + gate.shed >= len(records), timeout=30)
        shed = await consume(kafka_bootstrap, shed_topic, until=gate.shed, timeout=20,
                             settle=0.5, isolation_level=read)
        dead = await consume(kafka_bootstrap, dlq, until=pipe.stats.dead_lettered, timeout=20,
                             isolation_level=read)
        out = await consume(kafka_bootstrap, sink, until=pipe.stats.produced, timeout=20,
                            settle=0.5, isolation_level=read)
        committed = await committed_to_the_end(kafka_bootstrap, app.conf.id, source,
                                               len(records))
        view = snapshot(bp)  # operators see the batch sheds as per-event ones
    (seen,) = [g for g in view["gates"] if g["agent"] == "pipeline:jobs"]
    assert seen["shed_by_priority"] == seen["shed"] == gate.shed_by_priority
    (line,) = [m for m in render_prometheus(view).splitlines()
               if m.startswith("faust_backpressure_gate_shed_by_priority_total{")
               and 'agent="pipeline:jobs"' in m]
    assert line.endswith(f" {float(gate.shed_by_priority)!r}")
    assert runner.exactly_once == (guarantee == "exactly_once")  # the mode's own path ran
    assert runner.batches > 0 and max(sizes) > 1 and runner.abandoned == 0
    low = Counter(name for name, p in jobs if p == 0)
    kept = Counter(name for name, p in jobs if p > 0 and name[-1] != "7")
    refused = Counter([n for n, p in jobs if p > 0 and n[-1] == "7"] + ["broken"])
    got_shed = Counter(r.key.decode() for r in shed)
    got_out = Counter(r.value.decode() for r in out)
    got_dead = Counter(r.key.decode() for r in dead)
    if guarantee == "exactly_once":  # every input exactly once, in one of the three
        assert (got_shed, got_out, got_dead) == (low, kept, refused)
        assert len(shed) + len(out) + len(dead) == len(records)
    else:  # at least once: each in its place, none elsewhere (no crash: no repeats either)
        assert (set(got_shed), set(got_out), set(got_dead)) == (set(low), set(kept),
                                                                set(refused))
    assert gate.shed == gate.shed_by_priority >= len(low)
    assert pipe.stats.consumed >= len(records) - len(low)  # shed ones are not consumed
    assert sum(committed.values()) == len(records), committed  # every offset committed
    for record in shed:  # why, and at which priority, travels with the record
        meta = dict(record.headers)
        assert meta[h.SHED_PRIORITY] == b"0" and meta["trace"] == b"t"
        assert meta[h.SHED_REASON] == (b"load shedding: priority 0 < shed level 1 "
                                       b"(critical downstream lag)")
        assert meta[h.SHED_AGENT] == b"pipeline:jobs"
        assert meta[h.SOURCE_TOPIC] == source.encode()
        assert json.loads(record.value)["priority"] == 0  # the original bytes
