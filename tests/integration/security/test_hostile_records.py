"""Forged pressure samples against a running control loop (issue 11 section 2): with a secret
set, an unsigned lag of 10^9 and a lag of 1e999 are rejected and counted, the deciding agent
keeps deciding from the worker's own (signed) samples, and the rate stays where it was."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import faust
import pytest

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.control import BackpressureSeverity, BackpressureThresholds
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings
from faust_backpressure.wire.signing import BAD_SIGNATURE, MALFORMED

pytestmark = pytest.mark.kafka

SMALL = BackpressureThresholds(backlog_cleared_lag=10, scaling_threshold=50,
                               max_consumer_lag=100, critical_lag=200, cpu_threshold=1.0)


async def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.05)


async def test_forged_pressure_samples_change_nothing_and_crash_nothing(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    downstream, group = unique_name("priced"), unique_name("billing")
    await create_topics(kafka_bootstrap, {downstream: 1})  # empty: no lag, no pressure
    app = faust.App(unique_name("app"), datadir=str(tmp_path),
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}"))
    bp = Backpressure(app, settings=BackpressureSettings(secret="s3cret"))
    limiter = TokenBucketRateLimiter(100, 100)
    loop = bp.control_loop(limiter, downstream_group=group, downstream_topics=[downstream],
                           interval=0.3, thresholds=SMALL, name="orders")
    async with running_app(app):
        await eventually(lambda: len(loop.decisions) >= 2)  # its own signed samples count
        now = time.time()
        forged = {"limiter": "orders", "worker": "thief", "at": now, "lag": 10**9,
                  "utilization": 1.0, "cpu": 1.0}
        overflow = (b'{"limiter":"orders","worker":"thief","at":%f,"lag":1e999,'
                    b'"utilization":1.0,"cpu":1.0}' % now)
        await produce(kafka_bootstrap, f"{app.conf.id}-fbp-pressure",
                      [(b"orders", json.dumps(forged).encode()), (b"orders", overflow),
                       (b"orders", b"\xff not json")])
        await eventually(lambda: bp.rejections.get("pressure", {}).get(BAD_SIGNATURE, 0) >= 2
                         and bp.rejections["pressure"].get(MALFORMED, 0) >= 1)
        decided = len(loop.decisions)
        await eventually(lambda: len(loop.decisions) >= decided + 2)  # the agent lives on
    assert bp.rejections["pressure"] == {BAD_SIGNATURE: 2, MALFORMED: 1}
    assert limiter.current_rate_limit == 100
    assert all(d.severity is BackpressureSeverity.NORMAL for d in loop.decisions)
    assert "thief" not in loop.samples
