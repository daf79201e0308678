"""Keyed limits for operators against two real workers: ``status`` shows the keyed limit,
``key-override`` applies on both (each owns one partition's keys) and is acknowledged by both,
a hostile (unsigned or wrongly signed) override is counted and changes nothing,
``key-status`` and ``key-override --list`` read what is in force."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from faust_backpressure.app.keyed_ops import KeyOverrideCommand
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.workers import FaustWorker
from faust_backpressure.wire.kafka_clients import partition_for_key

from .status_watch import StatusWatches

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[3]
APP = "tests.integration.apps.keyed"
SECRET = "keyed-ops-test-secret"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faust", "-A", APP, "backpressure", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


def _key_on(partition: int, stem: str) -> bytes:
    """A key the default partitioner puts on ``partition`` of 2."""
    return next(k for k in (b"%s-%d" % (stem.encode(), i) for i in range(100))
                if partition_for_key(k, 2) == partition)


_WATCHES = StatusWatches(APP)  # this test's `status --watch` processes


@pytest.fixture(autouse=True)
def _close_watches() -> Iterator[None]:
    yield
    _WATCHES.close()


def _keyed_row(env: dict[str, str]) -> dict[str, Any]:
    """The keyed limit's row of ``status --json`` as of now (one ``--watch`` per test)."""
    (row,) = _WATCHES.report(env)["keyed"]
    assert isinstance(row, dict)
    return row


async def _until(check: Callable[[], dict[str, Any] | None], what: str,
                 timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last is not None:
            return last
        await asyncio.sleep(1.0)
    raise AssertionError(f"not {what} within {timeout:g} s")


async def test_keyed_limit_in_status_and_key_overrides_on_every_worker(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    env = {"FBP_APP_ID": unique_name("app"), "FBP_SOURCE": unique_name("src"),
           "FBP_SINK": unique_name("sink"), "FBP_PARTITIONS": "2", "FBP_RATE": "2",
           "FBP_BURST": "2", "FAUST_BP_SECRET": SECRET,
           "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    source, sink = env["FBP_SOURCE"], env["FBP_SINK"]
    await create_topics(kafka_bootstrap, {source: 2, sink: 2,
                                          env["FBP_APP_ID"] + "-per-key-deferred": 2})
    workers = [faust_workers(APP, name=f"w{i}", env=env) for i in range(2)]
    for worker in workers:
        worker.wait_ready()
    hot = [_key_on(p, "hot") for p in (0, 1)]
    await produce(kafka_bootstrap, source, [(k, k + b":%d" % i) for i in range(12) for k in hot])

    # status: both workers' stats of the keyed limit, the hot keys the most refused
    def limited() -> dict[str, Any] | None:
        row = _keyed_row(env)
        tops = {t["key"] for t in row["top_limited"]}
        ok = row["workers"] == 2 and (row["deferred"] or 0) >= 16 and tops >= {
            k.decode() for k in hot}
        return row if ok else None
    row = await _until(limited, "both workers' keyed status")
    assert (row["rate"], row["burst"], row["on_limit"]) == (2.0, 2.0, "defer")
    assert row["agent"].endswith("forward")
    text = _cli(env, "status")
    assert text.returncode == 0, text.stderr
    assert "keyed limits" in text.stdout and "per-key most refused keys lately: " in text.stdout

    # a key typed as str where the workers' keys are bytes would match nothing: said
    done = _cli(env, "key-override", "per-key", "typo", "--rate", "5")
    assert done.returncode == 0 and "are bytes, not str" in done.stderr, done
    done = _cli(env, "key-override", "per-key", "typo", "--clear")
    assert done.returncode == 0, done.stderr

    # an override for a fresh key on each partition, so on each worker
    fresh = [_key_on(p, "vip") for p in (0, 1)]
    for key in fresh:
        done = _cli(env, "key-override", "per-key", key.decode(), "--key-type", "bytes",
                    "--rate", "1000", "--reason", "test")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().endswith("1000/s, burst 1000 on 2 of 2 worker(s)"), done.stdout
    for worker in workers:
        for key in fresh:
            await asyncio.to_thread(worker.wait_for_log,
                                    rf"keyed limit per-key: key '{key.decode()}' set to 1000/s",
                                    new_only=False, timeout=10)
    # hostile records for two other keys: unsigned, and signed with another secret
    evil = [_key_on(p, "evil") for p in (0, 1)]
    forged = [KeyOverrideCommand.new("per-key", k, 1e6, None, "thief") for k in evil]
    ops = env["FBP_APP_ID"] + "-fbp-ops"
    await produce(kafka_bootstrap, ops, [(forged[0].key_record, forged[0].encode(None)),
                                         (forged[1].key_record,
                                          forged[1].encode(b"not the secret"))])
    for worker in workers:
        await asyncio.to_thread(worker.wait_for_log, r"ops record b'keyed/per-key/.*rejected",
                                new_only=False, timeout=20)

    # 20 events of each: the overridden keys all pass at once on both workers; the keys of
    # the hostile records keep the default (2/s, burst 2): most are deferred
    await produce(kafka_bootstrap, source,
                  [(k, k + b":%d" % i) for i in range(20) for k in fresh + evil])
    wanted = {k + b":%d" % i for i in range(20) for k in fresh + evil}
    out = await consume(kafka_bootstrap, sink, timeout=60,
                        until=lambda rs: {r.value for r in rs} >= wanted)
    by_key: dict[bytes, list[bytes]] = {}
    for record in out:
        assert record.key is not None and record.headers is not None
        via = dict(record.headers)["via"]
        by_key.setdefault(record.key, []).append(via)
    for key in fresh:
        assert by_key[key] == [source.encode()] * 20, key  # none deferred
    for key in evil:
        assert by_key[key].count(source.encode()) <= 3, key  # the burst, give or take

    listed = _cli(env, "key-override", "per-key", "--list")
    assert listed.returncode == 0, listed.stderr
    assert all(k.decode() in listed.stdout for k in fresh)
    assert not any(k.decode() in listed.stdout for k in evil)  # unsigned: not in force
    assert "2 key override(s) on per-key" in listed.stdout
    status = _cli(env, "key-status", "per-key", fresh[1].decode(), "--key-type", "bytes",
                  "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["from"].startswith("operator override") and report["rate"] == 1000.0
    assert report["operator_override"]["reason"] == "test"
    assert report["table_partition"] == 1
    evil_status = json.loads(_cli(env, "key-status", "per-key", evil[0].decode(),
                                  "--key-type", "bytes", "--json").stdout)
    assert evil_status["from"] == "the limit's default" and evil_status["rate"] == 2.0

    # cleared on both workers, acknowledged by both
    done = _cli(env, "key-override", "per-key", fresh[0].decode(), "--key-type", "bytes",
                "--clear")
    assert done.returncode == 0 and "cleared on 2 of 2 worker(s)" in done.stdout, done
    listed = _cli(env, "key-override", "per-key", "--list")
    assert fresh[0].decode() not in listed.stdout and fresh[1].decode() in listed.stdout
    row = _keyed_row(env)
    assert row["key_overrides"] == 1
