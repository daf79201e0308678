"""``faust -A app backpressure dlq-inspect PIPELINE`` on a DLQ a real worker filled (issue 26)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from faust_backpressure.agents import headers as h
from faust_backpressure.testing.kafka_io import consume, create_topics, produce, read_to_end
from faust_backpressure.testing.workers import FaustWorker

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[3]
APP = "tests.integration.agents.apps.pipeline"
TOTAL = 300
FAIL_EVERY = 10


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faust", "-A", APP, "backpressure",
                           "dlq-inspect", *args], capture_output=True, text=True, timeout=90,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **env})


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


async def _groups(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {str(group[0]) for group in await admin.list_consumer_groups()}
    finally:
        await admin.close()


async def _fill(bootstrap: str, env: dict[str, str],
                faust_workers: Callable[..., FaustWorker]) -> None:
    """A worker dead-letters every FAIL_EVERY-th id (ValueError); then a few records by hand:
    another error type with an undecodable header, and one of another pipeline."""
    source, dlq = env["FBP_SOURCE"], env["FBP_DLQ"]
    faust_workers(APP, name="worker", env=env).wait_ready()
    await produce(bootstrap, source, ((b"id-%05d" % i, b"id-%05d" % i) for i in range(TOTAL)))
    await consume(bootstrap, dlq, until=TOTAL // FAIL_EVERY, timeout=60)
    await consume(bootstrap, env["FBP_SINK"], until=TOTAL - TOTAL // FAIL_EVERY, timeout=60)
    odd = [(h.ERROR_TYPE, b"TimeoutError"), (h.STAGE, b"sink"), (h.PIPELINE, b"ids"),
           (h.ERROR_MESSAGE, b"\xff\xfe not utf-8")]
    await produce(bootstrap, dlq, [(b"x1", b"\x00\x01"), (b"x2", b"{}")], headers=odd)
    await produce(bootstrap, dlq, [(b"o", b"o")], headers=[(h.PIPELINE, b"other"),
                                                          (h.ERROR_TYPE, b"KeyError")])


async def test_dlq_inspect_counts_what_the_worker_dead_lettered(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    source, sink, dlq = unique_name("src"), unique_name("sink"), unique_name("dlq")
    env = {"FBP_APP_ID": unique_name("app"), "FBP_SOURCE": source, "FBP_SINK": sink,
           "FBP_DLQ": dlq, "FBP_FAIL_EVERY": str(FAIL_EVERY),
           "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    await create_topics(kafka_bootstrap, {source: 4, sink: 4, dlq: 3})
    await _fill(kafka_bootstrap, env, faust_workers)
    everything = await read_to_end(kafka_bootstrap, dlq)  # the truth
    ours = [r for r in everything if dict(r.headers).get(h.PIPELINE) != b"other"]
    truth = Counter(dict(r.headers)[h.ERROR_TYPE].decode() for r in ours)
    assert truth == {"ValueError": TOTAL // FAIL_EVERY, "TimeoutError": 2}
    groups_before = await _groups(kafka_bootstrap)

    done = _cli(env, "ids", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["by_error_type"] == dict(truth)
    assert report["by_stage"] == {"process": TOTAL // FAIL_EVERY, "sink": 2}
    assert report["counted"] == len(ours) and report["other_pipelines"] == 1
    assert report["read"] == report["records_in_topic"] == len(everything)
    assert not report["bounded"] and report["complete"] and report["partitions"] == 3
    stamps = sorted(r.timestamp for r in ours)
    assert report["kafka_timestamps"] == {"first": _iso(stamps[0]), "last": _iso(stamps[-1])}
    assert report["failures"]["first"] <= report["failures"]["last"]
    assert len(report["sample"]) == 5
    assert all(h.ERROR_TYPE in s["headers"] for s in report["sample"])
    assert {s["headers"][h.ERROR_TYPE] for s in report["sample"]} == {"ValueError",
                                                                       "TimeoutError"}
    odd = next(s for s in report["sample"] if s["headers"][h.ERROR_TYPE] == "TimeoutError")
    assert odd["headers"][h.ERROR_MESSAGE] == repr(b"\xff\xfe not utf-8")

    plain = _cli(env, "ids", "--sample", "3")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    print("\n" + plain.stdout)
    assert f"counted all {len(everything)} records (3 partition(s))" in plain.stdout
    assert re.search(rf"^ValueError +{TOTAL // FAIL_EVERY}$", plain.stdout, re.M)
    assert re.search(r"^TimeoutError +2$", plain.stdout, re.M)
    assert plain.stdout.count("    bp.error.type: ") == 3

    bounded = _cli(env, "ids", "--max-records", "3", "--json")
    assert bounded.returncode == 0, bounded.stderr
    small = json.loads(bounded.stdout)
    assert small["read"] == 3 and small["bounded"]
    assert sum(small["by_error_type"].values()) + small["other_pipelines"] == 3
    text = _cli(env, "ids", "--max-records", "3").stdout
    assert f"counted 3 of {len(everything)} records" in text, text
    # read-only: no consumer group was made, the worker's commits are untouched
    assert not {g for g in await _groups(kafka_bootstrap) - groups_before
                if "inspect" in g or env["FBP_APP_ID"] in g}


def test_an_unknown_pipeline_is_a_usage_error_and_a_missing_dlq_is_empty(
        kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    env = {"FBP_APP_ID": unique_name("app"), "FBP_SOURCE": unique_name("src"),
           "FBP_SINK": unique_name("sink"), "FBP_DLQ": unique_name("dlq"),
           "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    wrong = _cli(env, "nope")
    assert wrong.returncode == 2 and "no pipeline 'nope' (declared: ids)" in wrong.stderr
    empty = _cli(env, "ids")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.strip() == (f"DLQ {env['FBP_DLQ']} of pipeline ids is empty "
                                    "(the topic does not exist)")
    as_json = json.loads(_cli(env, "ids", "--json").stdout)
    assert as_json["exists"] is False and as_json["counted"] == 0
