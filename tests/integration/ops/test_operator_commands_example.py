"""examples/operator_commands.py against a live worker of examples/control_app.py: every
command acknowledged, and the hold/release and pause/resume seen by status and on Kafka."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from faust_backpressure.testing.kafka_io import read_to_end
from faust_backpressure.testing.workers import FaustWorker

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[3]


async def test_operator_walkthrough_steers_a_live_worker(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    name = unique_name("ops")
    env = {"CONTROL_EXAMPLE_NAME": name, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    faust_workers("examples.control_app", name="ops", env=env).wait_ready()
    done = subprocess.run([sys.executable, "-m", "examples.operator_commands", "--timeout", "30"],
                          capture_output=True, text=True, timeout=180, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    out = done.stdout
    for seen in ("ok: orders-api held at 5/s (severity OVERRIDE)",
                 "ok: orders-api no longer held", "ok: price paused", "ok: price running again"):
        assert seen in out
    for said in ("rate set, acknowledged by its owner", "orders-api: held at 5.0/s by",
                 "orders-api: released", "pipeline price: paused on 1 of 1 worker(s)",
                 "pipeline price: resumed on 1 of 1 worker(s)"):
        assert said in out
    assert out.count("-> exit code 0") == 10

    # The audit trail on Kafka agrees: a hold then its release, a pause then a resume.
    overrides = [json.loads(r.value) for r in await read_to_end(
        kafka_bootstrap, f"{name}-fbp-pressure") if b'"override"' in r.value]
    assert [(e["action"], e.get("rate")) for e in overrides] == [("hold", 5.0),
                                                                  ("release", None)]
    pauses = [json.loads(r.value)["paused"] for r in await read_to_end(
        kafka_bootstrap, f"{name}-fbp-ops") if r.key == b"pause/price"]
    assert pauses == [True, False]
