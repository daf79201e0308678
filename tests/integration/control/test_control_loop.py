"""The control loop against the real broker: downstream lag drives the limiter's rate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import faust
import pytest
from aiokafka import AIOKafkaConsumer

from faust_backpressure.agents import headers as h
from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings, ControlPolicy
from faust_backpressure.control import BackpressureSeverity, BackpressureThresholds
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

pytestmark = pytest.mark.kafka

# Scaled-down thresholds (the defaults are 1000/5000/10000/20000 records): same policy. The
# machine's CPU is no signal here (the CPU rule has its unit tests): on a busy test machine
# it would cut the restore staircase short.
SMALL = BackpressureThresholds(backlog_cleared_lag=10, scaling_threshold=50,
                               max_consumer_lag=100, critical_lag=200, cpu_threshold=1.0)


async def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("policy", ["step", "setpoint"])
async def test_downstream_lag_forces_the_emergency_rate_until_cleared_then_restores(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
        policy: ControlPolicy) -> None:
    downstream, group = unique_name("priced"), unique_name("billing")
    await create_topics(kafka_bootstrap, {downstream: 2})
    await produce(kafka_bootstrap, downstream, ((None, b"order") for _ in range(300)))
    # the group has started and read nothing (committed 0): a group with no commits at
    # all would be a warning, not throttled on (docs/control-loop.md)
    await commit_offsets(kafka_bootstrap, group, downstream,
                         dict.fromkeys(await end_offsets(kafka_bootstrap, downstream), 0))
    app = faust.App(unique_name("app"), datadir=str(tmp_path),
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}"))
    bp = Backpressure(app, settings=BackpressureSettings(control_policy=policy))
    limiter = TokenBucketRateLimiter(100, 100)
    loop = bp.control_loop(limiter, downstream_group=group, downstream_topics=[downstream],
                           interval=0.3, thresholds=SMALL)
    async with running_app(app):
        # Billing has read nothing: lag 300 > critical 200: near-zero rate, shedding asked.
        await eventually(lambda: limiter.current_rate_limit == 1.0)
        assert loop.last_decision is not None and loop.last_decision.shed
        await asyncio.sleep(1.0)  # still lagging: the rate stays near zero
        assert limiter.current_rate_limit == 1.0
        # Billing catches up: lag 0. The rate climbs back, 10% of 100/s per interval.
        await commit_offsets(kafka_bootstrap, group, downstream,
                             await end_offsets(kafka_bootstrap, downstream))
        await eventually(lambda: limiter.current_rate_limit == 100)
        pressure = await consume(kafka_bootstrap, bp.app.conf.id + "-fbp-pressure",
                                 until=lambda rs: len(rs) >= 3, timeout=10)
    severities = [d.severity for d in loop.decisions]
    assert severities[0] is BackpressureSeverity.EMERGENCY
    if policy == "step":  # the guide's restore: +10% of the base rate per interval
        restore = [round(d.rate, 6) for d in loop.decisions if d.reason == "restoring"]
        assert restore == [11, 21, 31, 41, 51, 61, 71, 81, 91, 100]
    else:  # at least as fast, never down while the backlog stays cleared
        last_emergency = max(i for i, d in enumerate(loop.decisions)
                             if d.severity is BackpressureSeverity.EMERGENCY)
        restore = [d.rate for d in list(loop.decisions)[last_emergency + 1:]]
        assert restore == sorted(restore) and restore[-1] == 100, restore
        assert len([r for r in restore if r < 100]) <= 9, restore
    assert severities[-1] is BackpressureSeverity.NORMAL
    # The samples are events on the pressure topic, keyed by the limiter.
    samples = [json.loads(r.value) for r in pressure]
    assert {r.key for r in pressure} == {loop.name.encode()}
    assert samples[0]["lag"] == 300 and {"worker", "utilization", "cpu", "at"} <= set(samples[0])


async def test_critical_lag_sheds_refused_events_to_the_shed_topic_and_loses_none(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    downstream, group = unique_name("priced"), unique_name("billing")
    source, sink = unique_name("src"), unique_name("sink")
    await create_topics(kafka_bootstrap, {downstream: 1, source: 1, sink: 1,
                                          source + "-shed": 1})
    await produce(kafka_bootstrap, downstream, ((None, b"order") for _ in range(300)))
    # the group has started and read nothing (committed 0): a group with no commits at
    # all would be a warning, not throttled on (docs/control-loop.md)
    await commit_offsets(kafka_bootstrap, group, downstream,
                         dict.fromkeys(await end_offsets(kafka_bootstrap, downstream), 0))
    app = faust.App(unique_name("app"), datadir=str(tmp_path),
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}"))
    bp = Backpressure(app, settings=BackpressureSettings())
    limiter = TokenBucketRateLimiter(20, 5)
    src = app.topic(source, value_type=bytes, value_serializer="raw")
    dst = app.topic(sink, value_type=bytes, value_serializer="raw")

    @app.agent(src)
    @bp.rate_limit(limiter, on_limit="wait")  # waits, unless the control loop says shed
    async def forward(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            await dst.send(value=value)
            forwarded.append(value)

    loop = bp.control_loop(limiter, downstream_group=group, downstream_topics=[downstream],
                           interval=0.3, thresholds=SMALL, shed_on_critical=True)
    forwarded: list[bytes] = []
    ids = [b"id-%03d" % i for i in range(200)]
    async with running_app(app):
        await eventually(lambda: loop.last_sample is not None and bp.gates[0].shed_now)
        await produce(kafka_bootstrap, source, ((None, i) for i in ids))
        # Every event is either forwarded or shed; then both topics hold what they should.
        await eventually(lambda: len(forwarded) + bp.gates[0].shed >= len(ids), timeout=60)
        shed = await consume(kafka_bootstrap, source + "-shed", until=bp.gates[0].shed,
                             timeout=30)
        everything = await consume(kafka_bootstrap, sink, until=len(forwarded), timeout=30,
                                   settle=0.5)
    assert len(shed) >= 150  # most were shed: 20/s with a burst of 5 forwards few
    assert sorted([r.value for r in everything] + [r.value for r in shed]) == ids  # none lost
    assert bp.gates[0].shed == len(shed) and bp.gates[0].waits == 0
    headers = dict(shed[0].headers)  # why it was shed travels with the record
    assert headers[h.SHED_REASON].endswith(b"(load shedding: critical downstream lag)")
    assert headers[h.SHED_LIMITER] == b"TokenBucketRateLimiter"


async def test_pressure_samples_carry_the_processed_count_and_members_to_the_decision(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    """The processed-count path: the probe sums the downstream group's committed offsets, the
    sample carries them (and the group's member count) on the pressure topic, the decider's
    controller turns them into the downstream's rate and a scale-out recommendation."""
    downstream, group = unique_name("priced"), unique_name("billing")
    await create_topics(kafka_bootstrap, {downstream: 2})
    await produce(kafka_bootstrap, downstream, ((None, b"order") for _ in range(400)))
    app = faust.App(unique_name("app"), datadir=str(tmp_path),
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}"))
    bp = Backpressure(app, settings=BackpressureSettings(control_policy="setpoint"))
    limiter = TokenBucketRateLimiter(300, 300)
    loop = bp.control_loop(limiter, downstream_group=group, downstream_topics=[downstream],
                           interval=0.3, thresholds=BackpressureThresholds(
                               backlog_cleared_lag=10, scaling_threshold=1_000,
                               max_consumer_lag=2_000, critical_lag=4_000, cpu_threshold=1.0))
    # One member of the downstream group that "processes" the 400 records in 20 steps of
    # 0.3 s (66.7/s), committing each step.
    ends = await end_offsets(kafka_bootstrap, downstream)
    member = AIOKafkaConsumer(downstream, bootstrap_servers=kafka_bootstrap, group_id=group,
                              enable_auto_commit=False)
    await member.start()
    committed: list[int] = []
    try:
        await eventually(lambda: len(member.assignment()) == 2)
        async with running_app(app):
            for step in range(1, 21):
                offsets = {tp: ends[tp.partition] * step // 20 for tp in member.assignment()}
                await member.commit(offsets)
                committed.append(sum(offsets.values()))
                await asyncio.sleep(0.3)
            decision = loop.last_decision
            await eventually(lambda: loop.last_sample is not None
                             and loop.last_sample.processed == committed[-1], timeout=10)
            pressure = await consume(kafka_bootstrap, bp.app.conf.id + "-fbp-pressure",
                                     until=lambda rs: len(rs) >= 10, timeout=10)
    finally:
        await member.stop()
    samples = [json.loads(r.value) for r in pressure]
    processed = [s["processed"] for s in samples]
    assert processed == sorted(processed) and set(processed) <= {0, *committed}
    assert {s["lag"] + s["processed"] for s in samples} == {400}  # lag + processed = produced
    assert {s.get("members") for s in samples} == {1}
    assert decision is not None and decision.downstream_rate is not None
    assert 66.7 * 0.7 <= decision.downstream_rate <= 66.7 * 1.3, decision
    # One worker at ~67/s, behind (lag 400 -> 0): 300/s would take 5 of them.
    rated = [d for d in loop.decisions if d.recommended_workers is not None]
    assert rated and all(d.recommended_workers in (1, 4, 5, 6) for d in rated), \
        [d.recommended_workers for d in rated]
