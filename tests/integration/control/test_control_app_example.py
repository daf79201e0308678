"""examples/control_app.py as a real worker: the slow ``bill`` stage lags, the control loop
throttles ``orders-api`` (seen with ``backpressure status --json``), and every order ends up
billed or dead-lettered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.workers import FaustWorker

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[3]
APP = "examples.control_app"
RATE = 200.0


def _status(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "faust", "-A", APP, "backpressure", "status",
                           "--json"], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert done.returncode == 0, done.stderr
    (api,) = [x for x in json.loads(done.stdout)["limiters"] if x["id"] == "orders-api"]
    return dict(api)


async def test_control_app_throttles_the_fast_stage_while_billing_lags_and_loses_nothing(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    name = unique_name("ctl")
    env = {"CONTROL_EXAMPLE_NAME": name, "CONTROL_EXAMPLE_RATE": f"{RATE:g}",
           "CONTROL_EXAMPLE_BILL_DELAY": "0.05",  # billing: 20/s, the price stage 200/s
           "FAUST_BP_MAX_CONSUMER_LAG": "60", "FAUST_BP_SCALING_THRESHOLD": "30",
           "FAUST_BP_MONITORING_INTERVAL": "0.5", "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    await create_topics(kafka_bootstrap, {f"{name}-{t}": 4
                                          for t in ("orders", "priced", "billed", "dlq")})
    faust_workers(APP, name="ctl", env=env).wait_ready()
    ids = [f"o{i}" for i in range(300)]
    bad = {"bad-json": b"{oops", "bad-qty": json.dumps(
        {"id": "bad-qty", "quantity": 0, "unit_price": 1.0}).encode()}
    await produce(kafka_bootstrap, f"{name}-orders",
                  [(i.encode(), json.dumps({"id": i, "quantity": 2, "unit_price": 1.5}).encode())
                   for i in ids] + [(k.encode(), v) for k, v in bad.items()])

    # The loop throttles: the decided (and persisted) rate drops below the base rate.
    deadline, seen = time.monotonic() + 30, []
    while True:
        api = _status(env)
        seen.append((api["decided_rate"], api["severity"], api["downstream_lag"]))
        if api["decided_rate"] is not None and api["decided_rate"] < RATE:
            break
        assert time.monotonic() < deadline, f"never throttled: {seen}"
        time.sleep(0.5)
    print("status samples (decided rate, severity, downstream lag):", seen)
    assert api["configured_rate"] == RATE, api
    assert api["severity"] in ("WARNING", "CRITICAL", "EMERGENCY"), api
    assert api["reason"] and api["downstream_group"] == name

    # Nothing lost: every order billed (with its invoice) or in the DLQ.
    def keys(records: list[Any]) -> set[str]:
        return {r.key.decode() for r in records}

    billed = await consume(kafka_bootstrap, f"{name}-billed",
                           until=lambda rs: keys(rs) >= set(ids), timeout=45)
    dead = await consume(kafka_bootstrap, f"{name}-dlq", until=lambda rs: keys(rs) >= set(bad),
                         timeout=15)
    assert keys(billed) == set(ids) and keys(dead) == set(bad)
    invoice = json.loads(billed[0].value)
    assert invoice["total"] == 3.0 and invoice["invoice"] == f"INV-{invoice['id']}"
