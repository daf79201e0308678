"""Issue 14: dead-lettered records are summarised, not one WARNING each; pipeline agents are
labelled after their pipeline."""

from __future__ import annotations

import asyncio
import logging

import faust
import pytest

from faust_backpressure.agents.dlq_log import DeadLetterLog
from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.limiters import TokenBucketRateLimiter


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_thousands_of_dead_letters_make_one_line_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    dlq = DeadLetterLog("price", logging.getLogger("t.dlq"), interval=10.0,
                        clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, "t.dlq")
    for i in range(5000):
        now[0] = i * 0.005  # 25 s of records
        dlq.record(f"orders[0]@{i}", ValueError(f"bad {i}") if i % 2 else KeyError("k"), 4)
    dlq.flush()
    lines = _warnings(caplog)
    assert len(lines) == 4, lines  # the first record, then at 10 s, 20 s and the rest
    assert lines[0].startswith("pipeline price: record dead-lettered: orders[0]@0 after 4 "
                               "attempt(s): KeyError")
    assert "record(s) dead-lettered in the last 10 s (" in lines[1]
    assert sum(int(line.split(": ")[1].split()[0]) for line in lines[1:]) == 4999
    assert lines[-1].endswith("last: orders[0]@4999 after 4 attempt(s): ValueError: bad 4999")
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 5000


async def test_a_timer_writes_the_last_summary(caplog: pytest.LogCaptureFixture) -> None:
    dlq = DeadLetterLog("p", logging.getLogger("t.timer"), interval=0.05)
    caplog.set_level(logging.WARNING, "t.timer")
    for i in range(3):
        dlq.record(f"t[0]@{i}", ValueError("x"), 1)
    assert len(_warnings(caplog)) == 1
    await asyncio.sleep(0.2)
    assert len(_warnings(caplog)) == 2 and "2 record(s) dead-lettered" in _warnings(caplog)[1]


def test_pipeline_agents_are_labelled_after_their_pipeline() -> None:
    app = faust.App("labels", broker="kafka://localhost:1")
    bp = Backpressure(app, settings=BackpressureSettings())
    price = bp.pipeline("price", source="a", sink=None, process=lambda v: v)
    ship = bp.pipeline("ship", source="b", sink=None, process=lambda v: v,
                       limiter=TokenBucketRateLimiter(10, 10))
    assert price.agent.label == "Agent: bp-pipeline.price"
    assert ship.agent.label == "Agent: bp-pipeline.ship"
