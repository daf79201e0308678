"""The two stages of ``bench/control_step.py``, one Faust app each (``FBP_STAGE`` picks).

Stage 1 (``FBP_STAGE=1``): ``bp.pipeline`` A -> B under the distributed limiter ``stage1``
(``FBP_RATE``/s, burst one second) with ``bp.control_loop`` on it (interval ``FBP_INTERVAL``,
scaling threshold 1,000, max lag 2,000, policy ``FBP_POLICY``), downstream group
``FBP_DOWNSTREAM_GROUP`` on B. Every new control decision is reported as a JSON event on
``FBP_REPORT`` (key ``decision``): when it was taken, the rate, severity, reason, the estimated
downstream rate; plus the limiter's rate and utilization and the pipeline's counts.

Stage 2 (``FBP_STAGE=2``): consumes B at exactly ``FBP_CAPACITY`` records/s (each record
holds the stage for 1/capacity s, scheduled on an absolute clock so that timer overshoot does
not lower the capacity) and reports its processed count per second (key ``stage2``). It
commits offsets every ``FBP_COMMIT_INTERVAL`` s (Faust's default 2.8 s).

Env: FBP_APP_ID, FBP_SOURCE (A), FBP_SINK (B), FBP_REPORT, KAFKA_BOOTSTRAP_SERVERS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from typing import Any

import faust

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.control import BackpressureThresholds
from faust_backpressure.testing.settings import fast_faust_settings

STAGE = os.environ.get("FBP_STAGE", "1")
overrides: dict[str, Any] = {"topic_partitions": 1}
if STAGE == "2":
    overrides["broker_commit_interval"] = float(os.environ.get("FBP_COMMIT_INTERVAL", "2.8"))
app = faust.App(os.environ["FBP_APP_ID"], store="memory://", **fast_faust_settings(**overrides))
report = app.topic(os.environ["FBP_REPORT"], key_type=bytes, value_type=bytes,
                   key_serializer="raw", value_serializer="raw")
sink = app.topic(os.environ["FBP_SINK"], key_type=bytes, value_type=bytes,
                 key_serializer="raw", value_serializer="raw")


async def send(kind: str, body: dict[str, Any]) -> None:
    await report.send(key=kind.encode(), value=json.dumps(body).encode())


if STAGE == "1":
    settings = BackpressureSettings(scaling_threshold=1_000, max_consumer_lag=2_000,
                                    control_policy=os.environ.get("FBP_POLICY", "setpoint"))  # type: ignore[arg-type]
    # The machine is shared: its CPU is no signal here (the lag is the signal under test).
    thresholds = dataclasses.replace(BackpressureThresholds.from_settings(settings),
                                     cpu_threshold=1.0)
    bp = Backpressure(app, settings=settings)
    source = app.topic(os.environ["FBP_SOURCE"], key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    rate = float(os.environ.get("FBP_RATE", "300"))
    pipeline = bp.pipeline("stage1", source=source, sink=sink, process=lambda value: value,
                           limiter="stage1", tokens_per_second=rate, burst_capacity=rate)
    loop = bp.control_loop("stage1", downstream_group=os.environ["FBP_DOWNSTREAM_GROUP"],
                           downstream_topics=[os.environ["FBP_SINK"]],
                           interval=float(os.environ.get("FBP_INTERVAL", "1.0")),
                           thresholds=thresholds)

    @app.timer(0.1)
    async def report_decisions() -> None:
        seen = getattr(report_decisions, "seen", 0)
        # the last decisions only (a bounded history): those decided since the last report
        decisions = list(loop.decisions)[max(0, len(loop.decisions) - (loop.decided - seen)):]
        for d in decisions:
            limiter = loop.limiter
            await send("decision", {
                "at": time.time(), "rate": d.rate, "severity": d.severity.name,
                "circuit": d.circuit.value, "reason": d.reason,
                "downstream_rate": d.downstream_rate,
                "recommended_workers": d.recommended_workers,
                "lag_seconds": None if d.lag_seconds is None or d.lag_seconds == float("inf")
                else d.lag_seconds,
                "limiter_rate": limiter.current_rate_limit,
                "utilization": float(limiter.current_utilization),
                "consumed": pipeline.stats.consumed, "produced": pipeline.stats.produced,
                "samples": len(loop.samples)})
        report_decisions.seen = loop.decided  # type: ignore[attr-defined]

else:
    capacity = float(os.environ.get("FBP_CAPACITY", "100"))
    counts: dict[int, int] = {}

    @app.agent(sink)
    async def stage2(stream: faust.StreamT[bytes]) -> None:
        clock = asyncio.get_running_loop().time
        free_at = clock()
        async for _value in stream:
            now = clock()
            if now - free_at > 0.05:  # idle (no record waiting) since free_at
                free_at = now
            free_at += 1.0 / capacity
            if free_at > now:
                await asyncio.sleep(free_at - now)
            second = int(time.time())
            counts[second] = counts.get(second, 0) + 1

    @app.timer(0.5)
    async def report_counts() -> None:
        now = int(time.time())
        done = {s: n for s, n in counts.items() if s < now}
        for s in done:
            del counts[s]
        await send("stage2", {"at": time.time(), "counts": {str(s): n for s, n in done.items()}})
