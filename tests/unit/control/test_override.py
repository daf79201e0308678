"""Operator overrides on the control topic: a hold wins over the policy until released; a
forged, replayed, stale or unknown one changes nothing."""

from __future__ import annotations

import json
import time

import faust

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.control.loop import ControlLoop, ControlLoops
from faust_backpressure.control.override import Override
from faust_backpressure.control.samples import WorkerSample
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.wire.signing import BAD_SIGNATURE, REPLAYED, STALE, UNKNOWN

SECRET = "s3cret"


def _loops() -> tuple[ControlLoops, ControlLoop]:
    app = faust.App("override-unit", broker="kafka://127.0.0.1:1")
    bp = Backpressure(app, settings=BackpressureSettings(secret=SECRET))
    loop = bp.control_loop(TokenBucketRateLimiter(100, 100), downstream_group="g",
                           downstream_topics=["t"], interval=0.01, name="orders")
    assert bp._control is not None
    # a plain dict for the changelog-backed table (writing one needs a running worker's event)
    bp._control.table = {}  # type: ignore[assignment]
    return bp._control, loop


def _drown(loops: ControlLoops, n: int = 5) -> None:
    for i in range(n):
        raw = WorkerSample(limiter="orders", worker="w", at=time.time(), lag=10**6,
                           utilization=1.0, cpu=0.1).encode(SECRET.encode())
        loops.handle(raw, b"orders")
        time.sleep(0.012 if i < n - 1 else 0)


def test_a_hold_wins_over_the_policy_until_released_and_is_persisted() -> None:
    loops, loop = _loops()
    hold = Override.hold("orders", rate=42.0, by="alice@ops", reason="drill")
    loops.handle(hold.encode(SECRET.encode()), b"orders")
    assert loop.limiter.current_rate_limit == 42.0
    _drown(loops)  # the policy would go to the emergency rate
    assert loop.limiter.current_rate_limit == 42.0 and not loop.decisions
    state = json.loads(loops.table["orders"])
    assert state["override"]["rate"] == 42.0 and state["last_override"] == hold.override_id
    release = Override.release("orders", by="alice@ops")
    loops.handle(release.encode(SECRET.encode()), b"orders")
    _drown(loops)
    assert loop.limiter.current_rate_limit < 42.0 and loop.decisions
    assert json.loads(loops.table["orders"])["last_override"] == release.override_id


def test_a_hold_without_a_rate_holds_the_emergency_rate() -> None:
    loops, loop = _loops()
    loops.handle(Override.hold("orders", rate=None, by="x").encode(SECRET.encode()), b"orders")
    assert loop.limiter.current_rate_limit == loop.controller.thresholds.emergency_rate


def test_forged_replayed_stale_and_unknown_overrides_change_nothing() -> None:
    loops, loop = _loops()
    secret = SECRET.encode()
    hold = Override.hold("orders", rate=5.0, by="x")
    cases = [(hold.encode(b"guess"), BAD_SIGNATURE),
             (Override("orders", "hold", "old", "x", time.time() - 3600, 5.0).encode(secret),
              STALE),
             (Override.hold("nope", rate=5.0, by="x").encode(secret), UNKNOWN)]
    for raw, code in cases:
        key = json.loads(raw)["limiter"].encode()
        before = loops.rejections.by_reason[code]
        loops.handle(raw, key)
        assert loops.rejections.by_reason[code] == before + 1
        assert loop.limiter.current_rate_limit == 100.0
    loops.handle(hold.encode(secret), b"orders")
    loops.handle(Override.release("orders", by="x").encode(secret), b"orders")
    loops.handle(hold.encode(secret), b"orders")  # the same hold again: a replay
    assert loops.rejections.by_reason[REPLAYED] == 1 and loop.override is None
