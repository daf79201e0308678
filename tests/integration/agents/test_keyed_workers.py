"""Keyed limits in real ``faust worker`` processes: refusal at start-up, overrides that survive a
restart with fresh data dirs."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from faust_backpressure.agents.keyed import CHECK_EVERY, CHECKED_EVENTS
from faust_backpressure.testing.kafka_io import (
    consume,
    create_topics,
    end_offsets,
    produce,
    read_to_end,
)
from faust_backpressure.testing.workers import FaustWorker
from faust_backpressure.wire.kafka_clients import partition_for_key

from .helpers import hdr

pytestmark = pytest.mark.kafka

APP = "tests.integration.apps.keyed"
REPO = Path(__file__).resolve().parents[3]


def _env(unique_name: Callable[[str], str], **extra: str) -> dict[str, str]:
    return {"FBP_APP_ID": unique_name("app"), "FBP_SOURCE": unique_name("src"),
            "FBP_SINK": unique_name("sink"), **extra}


async def test_a_worker_whose_stream_is_not_keyed_by_the_limit_refuses_to_run(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    env = _env(unique_name, FBP_KEY="value", FBP_PARTITIONS="2")
    await create_topics(kafka_bootstrap, {env["FBP_SOURCE"]: 2, env["FBP_SINK"]: 2,
                                          env["FBP_APP_ID"] + "-per-key-deferred": 2})
    # keyed by order id, limited by customer: a customer's events are on both partitions
    await produce(kafka_bootstrap, env["FBP_SOURCE"],
                  [(b"order-%d" % i, b"cust-%d:%d" % (i % 3, i)) for i in range(40)])
    worker = faust_workers(APP, env=env)
    # the app crashes and the process exits (an orchestrator restarts it or alerts): it
    # never runs with split buckets, and the error is one line, as a bad setting's
    assert worker.wait_exit(timeout=60) == 1
    lines = [line for line in worker.logs().splitlines()
             if line.startswith("faust-backpressure: not co-partitioned: ")]
    assert lines and "is not the record's key" in lines[0] and "group_by" in lines[0]
    # Only events already on their limit key's partition (by the partitioner) went through
    # before the first misplaced one stopped the worker.
    passed = await read_to_end(kafka_bootstrap, env["FBP_SINK"])
    for record in passed:
        assert record.value is not None
        customer = record.value.split(b":")[0]
        assert int(hdr(record)["partition"]) == partition_for_key(customer, 2)
    assert len(passed) < 40


async def test_partition_counts_that_differ_are_refused_at_start(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    env = _env(unique_name, FBP_PARTITIONS="3")
    await create_topics(kafka_bootstrap, {env["FBP_SOURCE"]: 2, env["FBP_SINK"]: 2,
                                          env["FBP_APP_ID"] + "-per-key-deferred": 3})
    await produce(kafka_bootstrap, env["FBP_SOURCE"], [(b"k%d" % i, b"v") for i in range(10)])
    worker = faust_workers(APP, env=env)
    assert worker.wait_exit(timeout=60) == 1
    assert "faust-backpressure: not co-partitioned: keyed limit 'per-key' on agent forward: " \
           "source topic" in worker.logs()
    assert "has 2 partitions but" in worker.logs()
    assert await read_to_end(kafka_bootstrap, env["FBP_SINK"]) == []


async def test_a_stream_that_goes_wrong_after_the_first_checked_events_is_refused_too(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    env = _env(unique_name, FBP_KEY="value", FBP_PARTITIONS="2", FBP_RATE="1e9",
               FBP_BURST="1e9")
    await create_topics(kafka_bootstrap, {env["FBP_SOURCE"]: 2, env["FBP_SINK"]: 2})
    # CHECKED_EVENTS records keyed by their limit key, then a producer keyed by order id:
    # customers on both partitions (only a sample of these is checked)
    good = [(b"c%d" % (i % 50), b"c%d:%d" % (i % 50, i)) for i in range(CHECKED_EVENTS)]
    late = [(b"order-%d" % i, b"late-%d:%d" % (i % 7, i)) for i in range(6 * CHECK_EVERY)]
    late = [(k, v) for k, v in late  # each one misplaced: any sampled one is refused
            if partition_for_key(k, 2) != partition_for_key(v.split(b":")[0], 2)]
    assert len(late) > 2 * CHECK_EVERY
    await produce(kafka_bootstrap, env["FBP_SOURCE"], good)
    worker = faust_workers(APP, env=env)
    # the late ones only once the first CHECKED_EVENTS have gone through (the two partitions
    # are read side by side: produced together, some late ones came among the first checked)
    await consume(kafka_bootstrap, env["FBP_SINK"], until=len(good), timeout=90)
    await produce(kafka_bootstrap, env["FBP_SOURCE"], late)
    assert worker.wait_exit(timeout=90) == 1
    assert "faust-backpressure: not co-partitioned: " in worker.logs()
    passed = await read_to_end(kafka_bootstrap, env["FBP_SINK"])
    assert len(passed) < len(good) + len(late)


async def test_a_fresh_cluster_needs_no_deferral_topic_made_by_hand(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    env = _env(unique_name, FBP_PARTITIONS="2", FBP_RATE="10", FBP_BURST="5")
    deferral = env["FBP_APP_ID"] + "-per-key-deferred"
    # the app's own topics only: the deferral topic is the limit's to declare (the test
    # broker auto-creates topics with 1 partition, as many brokers do)
    await create_topics(kafka_bootstrap, {env["FBP_SOURCE"]: 2, env["FBP_SINK"]: 2})
    faust_workers(APP, env=env).wait_ready()
    values = [key + b":%02d" % i for i in range(20) for key in (b"hot", b"warm")]
    await produce(kafka_bootstrap, env["FBP_SOURCE"], [(v.split(b":")[0], v) for v in values])
    out = await consume(kafka_bootstrap, env["FBP_SINK"], timeout=60,
                        until=lambda rs: {r.value for r in rs} >= set(values))
    assert {r.value for r in out} == set(values)
    via = [hdr(r)["via"] for r in out]
    assert via.count(deferral.encode()) >= 20  # 15 of each key's 20 over its burst of 5
    assert set(await end_offsets(kafka_bootstrap, deferral)) == {0, 1}  # the limit's 2


def _load_app(env: dict[str, str]) -> Any:
    """The app module in this process (not started), to call the Python API on it. The env
    is set only while the module is imported: left in ``os.environ`` it leaked into every
    later test's worker processes (e.g. FBP_RATE made another test's pipeline app slow)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        sys.modules.pop(APP, None)
        return importlib.import_module(APP)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def test_overrides_survive_a_restart_of_every_worker_with_fresh_data_dirs(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    env = _env(unique_name, FBP_PARTITIONS="2", FBP_RATE="10", FBP_BURST="5")
    await create_topics(kafka_bootstrap, {env["FBP_SOURCE"]: 2, env["FBP_SINK"]: 2,
                                          env["FBP_APP_ID"] + "-per-key-deferred": 2})
    first = faust_workers(APP, env=env, name="first").wait_ready()
    module = _load_app(env)
    try:
        await module.limit.set_limits(b"vip", 1000, 1000)
    finally:
        await module.app.producer.stop()
    # and one from the command line
    cli = subprocess.run(
        [sys.executable, "-m", "faust", "-A", APP, "backpressure", "set-rate", "per-key", "1000",
         "--key", "vip2", "--key-type", "bytes", "--burst", "1000"],
        env={**os.environ, **env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
             "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "per-key vip2: 1000/s, burst 1000" in cli.stdout
    first.stop()
    # every worker gone; the next one starts from a fresh data dir: only the changelog knows
    faust_workers(APP, env=env, name="second").wait_ready()
    await produce(kafka_bootstrap, env["FBP_SOURCE"],
                  [(key, key + b":%d" % i) for i in range(30)
                   for key in (b"vip", b"vip2", b"std")])
    out = await consume(kafka_bootstrap, env["FBP_SINK"], until=90, timeout=40)
    via: dict[bytes, list[bytes]] = {b"vip": [], b"vip2": [], b"std": []}
    for record in out:
        assert record.key is not None
        via[record.key].append(hdr(record)["via"])
    source = env["FBP_SOURCE"].encode()
    assert via[b"vip"] == via[b"vip2"] == [source] * 30  # their own limits: never deferred
    assert via[b"std"][:5] == [source] * 5 and via[b"std"].count(source) < 15


def _worst_excess(times: list[float], rate: float) -> float:
    times = sorted(times)
    return max(j - i + 1 - rate * (times[j] - times[i])
               for i in range(len(times)) for j in range(i, len(times)))


async def test_sigkill_mid_run_levels_come_back_and_nothing_is_lost(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    rate, burst = 10.0, 5.0
    env = _env(unique_name, FBP_PARTITIONS="2", FBP_RATE=str(rate), FBP_BURST=str(burst))
    await create_topics(kafka_bootstrap, {env["FBP_SOURCE"]: 2, env["FBP_SINK"]: 2,
                                          env["FBP_APP_ID"] + "-per-key-deferred": 2})
    first = faust_workers(APP, env=env, name="first").wait_ready()
    keys = [b"c%02d" % i for i in range(10)]
    values = [key + b":%02d" % i for i in range(25) for key in keys]
    await produce(kafka_bootstrap, env["FBP_SOURCE"], [(v.split(b":")[0], v) for v in values])
    # killed while most keys are deep in deferral (25 events each at 10/s: 2 s of backlog)
    await consume(kafka_bootstrap, env["FBP_SINK"], until=100, timeout=40)
    first.kill()
    faust_workers(APP, env=env, name="second").wait_ready()
    out = await consume(kafka_bootstrap, env["FBP_SINK"], timeout=60,
                        until=lambda rs: {r.value for r in rs} >= set(values))
    assert {r.value for r in out} == set(values)  # every input came out (duplicates allowed)
    for key in keys:
        admitted = [float(hdr(r)["at"]) for r in out if r.key == key]
        # +1 from the gate to the body; a fresh burst after the kill would add 5
        assert _worst_excess(admitted, rate) <= burst + 1, key
