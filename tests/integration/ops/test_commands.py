"""``faust -A app backpressure status | set-rate | reset | lag`` against two real workers
(``status --json --watch`` for the repeated looks, ``status`` as a table too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from faust_backpressure.testing.kafka_io import (
    commit_offsets,
    consume,
    create_topics,
    produce,
    read_to_end,
)
from faust_backpressure.testing.workers import FaustWorker

from .status_watch import StatusWatches

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[3]
APP = "tests.integration.ops.apps.ops_app"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faust", "-A", APP, "backpressure", *args],
                          capture_output=True, text=True, timeout=90, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


_WATCHES = StatusWatches(APP)  # this test's `status --watch` processes


@pytest.fixture(autouse=True)
def _close_watches() -> Iterator[None]:
    yield
    _WATCHES.close()


def _status(env: dict[str, str]) -> dict[str, Any]:
    """``status --json`` as of now (from one ``--watch`` process per test)."""
    return _WATCHES.report(env)


def _limiter(report: dict[str, Any], lid: str) -> dict[str, Any]:
    (found,) = [x for x in report["limiters"] if x["id"] == lid]
    return found


def _until(check: Callable[[], dict[str, Any] | None], timeout: float = 40.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got is not None:
            return got
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.5)


async def test_status_set_rate_reset_and_lag_work_across_workers(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    down, down_group = unique_name("priced"), unique_name("billing")
    env = {"FBP_APP_ID": unique_name("app"), "FBP_SOURCE": unique_name("src"),
           "FBP_SINK": unique_name("sink"), "FBP_DOWN_GROUP": down_group,
           "FBP_DOWN_TOPIC": down, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    await create_topics(kafka_bootstrap, {down: 1})
    await produce(kafka_bootstrap, down, ((None, b"x") for _ in range(300)))
    await commit_offsets(kafka_bootstrap, down_group, down, {0: 10})  # billing is 290 behind
    workers = [faust_workers(APP, name=f"w{i}", env=env) for i in range(2)]
    for worker in workers:
        worker.wait_ready()
    await produce(kafka_bootstrap, env["FBP_SOURCE"], ((b"k%d" % i, b"v") for i in range(20)))

    # status: the control loop holds ops-api at its emergency rate; both workers sample it.
    def drowning() -> dict[str, Any] | None:
        api = _limiter(_status(env), "ops-api")
        ok = (api["emergency"] and api["decided_rate"] == 1.0 and api["downstream_lag"] == 290
              and len(api["sampling_workers"]) == 2 and api["rate"] == 1.0)
        return api if ok else None
    api = _until(drowning)
    assert api["severity"] == "EMERGENCY" and api["configured_rate"] == 200.0
    assert api["reason"] and api["control_loop"] and api["downstream_group"] == down_group
    (credits,) = _status(env)["credit_flows"]
    assert credits["name"] == "billing-credits" and credits["downstream_lag"] == 290
    assert credits["credits"] == 500 - 290
    people = _cli(env, "status")
    assert people.returncode == 0 and "ops-api" in people.stdout and "EMERGENCY" in people.stdout
    assert "billing-credits" in people.stdout
    assert "orders" in people.stdout

    # set-rate and reset go through the request topic and come back acknowledged
    done = _cli(env, "set-rate", "ops-free", "250")
    assert done.returncode == 0, done.stderr
    assert "acknowledged by its owner" in done.stdout and "rate 250/s" in done.stdout
    free = _limiter(_status(env), "ops-free")
    assert free["rate"] == 250.0 and free["configured_rate"] == 100.0
    done = _cli(env, "reset", "ops-free")
    assert done.returncode == 0 and "reset, acknowledged" in done.stdout, done.stderr
    assert _limiter(_status(env), "ops-free")["epoch"] == free["epoch"] + 1

    # an id no worker declares is never acknowledged: exit 1 and why
    done = _cli(env, "set-rate", "no-such-limiter", "5", "--timeout", "3")
    assert done.returncode == 1 and "no acknowledgement" in done.stderr

    # lag of any group, with time-lag
    done = _cli(env, "lag", down_group, "--json")
    assert done.returncode == 0, done.stderr
    lag = json.loads(done.stdout)
    assert lag["lag"] == 290 and lag["partitions"][0]["committed"] == 10
    assert lag["max_time_lag"] > 0
    done = _cli(env, "lag", unique_name("nobody"))
    assert done.returncode == 1 and "no committed offsets" in done.stderr


async def test_a_downstream_group_with_no_commits_is_a_warning_and_not_throttled_on(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    down, down_group = unique_name("priced"), unique_name("billing")
    env = {"FBP_APP_ID": unique_name("app"), "FBP_SOURCE": unique_name("src"),
           "FBP_SINK": unique_name("sink"), "FBP_DOWN_GROUP": down_group,
           "FBP_DOWN_TOPIC": down, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    await create_topics(kafka_bootstrap, {down: 1})
    await produce(kafka_bootstrap, down, ((None, b"x") for _ in range(300)))
    worker = faust_workers(APP, name="nc", env=env)
    worker.wait_ready()
    # the group has committed nothing (a typo, a consumer not started): said once, in the
    # log, in status (loop and credit flow), and the loop does not throttle on the backlog
    worker.wait_for_log(rf"control loop ops-api: group '{down_group}' has no committed "
                        rf"offsets on {down} .*backlog of 300 records is not counted")

    def warned() -> dict[str, Any] | None:
        report = _status(env)
        api = _limiter(report, "ops-api")
        return report if api["decided_rate"] is not None and api["input_warning"] else None
    report = _until(warned)
    api = _limiter(report, "ops-api")
    assert "has no committed offsets" in api["input_warning"]
    assert api["severity"] == "NORMAL" and api["decided_rate"] == 200.0 and api["rate"] == 200.0
    assert api["downstream_lag"] == 0
    (credits,) = report["credit_flows"]  # a credit flow still counts the backlog
    assert credits["downstream_lag"] == 300 and "counts as lag" in credits["input_warning"]
    assert [w.split(":")[0] for w in report["warnings"]] == [
        "control loop ops-api", "credit flow billing-credits"]
    people = _cli(env, "status")
    assert f"WARNING control loop ops-api: group '{down_group}' has no committed" in people.stdout

    # once the group commits (290 behind), the loop throttles and the warning is gone
    await commit_offsets(kafka_bootstrap, down_group, down, {0: 10})
    api = _until(lambda: (lambda x: x if x["decided_rate"] == 1.0 else None)(
        _limiter(_status(env), "ops-api")))
    assert api["input_warning"] is None and api["severity"] == "EMERGENCY"
    worker.wait_for_log(r"control loop ops-api: its input is fine again")


async def test_emergency_stop_holds_over_the_control_loop_across_restarts_until_restore(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    down, down_group = unique_name("priced"), unique_name("billing")
    env = {"FBP_APP_ID": unique_name("app"), "FBP_SOURCE": unique_name("src"),
           "FBP_SINK": unique_name("sink"), "FBP_DOWN_GROUP": down_group,
           "FBP_DOWN_TOPIC": down, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    await create_topics(kafka_bootstrap, {down: 1})
    await produce(kafka_bootstrap, down, ((None, b"x") for _ in range(300)))
    # billing has started and read nothing: a group with no commits is not throttled on
    await commit_offsets(kafka_bootstrap, down_group, down, {0: 0})
    first = [faust_workers(APP, name=f"a{i}", env=env) for i in range(2)]
    for worker in first:
        worker.wait_ready()
    _until(lambda: (lambda x: x if x["decided_rate"] == 1.0 else None)(
        _limiter(_status(env), "ops-api")))

    done = _cli(env, "emergency-stop", "ops-api", "--rate", "7", "--reason", "drill")
    assert done.returncode == 0 and "held at 7.0/s" in done.stdout, done.stderr
    for _ in range(3):  # the loop (deciding 1/s every 0.5 s) does not win
        api = _limiter(_status(env), "ops-api")
        assert api["rate"] == 7.0 and api["severity"] == "OVERRIDE"
        assert api["override"]["rate"] == 7.0 and api["override"]["reason"] == "drill"

    for worker in first:  # every worker restarts, with a fresh state dir
        worker.stop()
    second = faust_workers(APP, name="b0", env=env)
    second.wait_ready()
    pid = f":{second.pid}"

    def new_decider() -> dict[str, Any] | None:
        api = _limiter(_status(env), "ops-api")
        return api if any(w.endswith(pid) for w in api["sampling_workers"]) else None
    _until(new_decider)
    for _ in range(3):
        api = _limiter(_status(env), "ops-api")
        assert api["rate"] == 7.0 and api["override"] is not None

    done = _cli(env, "restore", "ops-api")
    assert done.returncode == 0 and "released" in done.stdout, done.stderr
    released = _until(lambda: (lambda x: x if x["rate"] == 1.0 else None)(
        _limiter(_status(env), "ops-api")))
    assert released["override"] is None and released["severity"] != "OVERRIDE"
    # the audit trail: both events on the control topic
    events = [json.loads(r.value) for r in await read_to_end(
        kafka_bootstrap, f"{env['FBP_APP_ID']}-fbp-pressure") if b'"override"' in r.value]
    assert [(e["action"], e.get("rate")) for e in events] == [("hold", 7.0), ("release", None)]
    assert all(e["by"] for e in events)


async def test_pause_stops_a_pipeline_on_every_worker_and_resume_loses_nothing(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    down = unique_name("priced")
    env = {"FBP_APP_ID": unique_name("app"), "FBP_SOURCE": unique_name("src"),
           "FBP_SINK": unique_name("sink"), "FBP_DOWN_GROUP": unique_name("billing"),
           "FBP_DOWN_TOPIC": down, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    await create_topics(kafka_bootstrap, {down: 1, env["FBP_SINK"]: 1})  # no lag: full rate
    workers = [faust_workers(APP, name=f"p{i}", env=env) for i in range(2)]
    for worker in workers:
        worker.wait_ready()
    done = _cli(env, "pause", "orders", "--reason", "deploying billing")
    assert done.returncode == 0, done.stderr
    assert "paused on 2 of 2 worker(s)" in done.stdout
    ids = [b"v%d" % i for i in range(100)]
    await produce(kafka_bootstrap, env["FBP_SOURCE"], ((b"k%d" % i, v) for i, v in enumerate(ids)))
    (orders,) = _status(env)["pipelines"]
    assert orders["paused"] and orders["paused_by"] and orders["source_lag"] == 100
    assert await read_to_end(kafka_bootstrap, env["FBP_SINK"]) == []

    done = _cli(env, "resume", "orders")
    assert done.returncode == 0 and "resumed on 2 of 2" in done.stdout, done.stderr
    out = await consume(kafka_bootstrap, env["FBP_SINK"], until=100, timeout=30)
    assert sorted(r.value for r in out) == sorted(ids)
    done = _cli(env, "pause", "no-such-pipeline")
    assert done.returncode == 2 and "no pipeline 'no-such-pipeline'" in done.stderr
