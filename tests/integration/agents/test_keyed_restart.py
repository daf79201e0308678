"""A keyed limit's worker stopped and restarted on the same data dir (its RocksDB state and the
changelog written in batches): no recovery error, the levels back, nothing lost; both modes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from faust_backpressure.testing.kafka_io import committed_offsets, create_topics, produce
from faust_backpressure.testing.workers import FaustWorker
from faust_backpressure.wire.kafka_clients import partition_for_key
from faust_backpressure.wire.topics import keyed_table

from .helpers import Record, hdr, read_committed
from .test_keyed_workers import APP, _env

pytestmark = pytest.mark.kafka

#: A token every 1000 s: a key's level does not refill during the test, so whether it came
#: back shows in which events pass, not in when.
RATE, BURST = "0.001", "3"


def _key_on(partition: int, prefix: bytes) -> bytes:
    """The first ``prefix<n>`` the partitioner puts on ``partition`` (of 2)."""
    return next(prefix + b"%d" % n for n in range(100)
                if partition_for_key(prefix + b"%d" % n, 2) == partition)


def _passed(records: list[Record], source: str) -> set[bytes]:
    """Values admitted straight from the source (not via the deferral topic)."""
    return {r.value for r in records if r.value is not None
            and hdr(r)["via"] == source.encode()}


def _has_all(values: set[bytes]) -> Callable[[list[Record]], bool]:
    return lambda records: {r.value for r in records} >= values


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_restart_on_the_same_data_dir_keeps_every_keys_level_and_loses_nothing(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
        faust_workers: Callable[..., FaustWorker], guarantee: str) -> None:
    env = _env(unique_name, FBP_PARTITIONS="2", FBP_RATE=RATE, FBP_BURST=BURST,
               FBP_GUARANTEE=guarantee)
    app_id, source, sink = env["FBP_APP_ID"], env["FBP_SOURCE"], env["FBP_SINK"]
    deferral = f"{app_id}-per-key-deferred"
    changelog = f"{app_id}-{keyed_table('per-key')}-changelog"
    await create_topics(kafka_bootstrap, {source: 2, sink: 2, deferral: 2})
    # hot: at its limit with events in deferral; warm: 2 of its 3 tokens used. Each phase ends
    # with a fresh marker key on each partition: a sink partition's records come in source
    # order, so once a marker is out every event before it on its partition was processed.
    hot, warm = _key_on(0, b"hot"), _key_on(1, b"warm")
    markers = {phase: [_key_on(p, b"marker-%d-" % phase) for p in (0, 1)] for phase in (1, 2)}
    first_events = [hot + b":%d" % i for i in range(5)] + [warm + b":0", warm + b":1"]
    second_events = [hot + b":%d" % i for i in range(5, 8)] + [warm + b":2", warm + b":3"]
    data_dir = tmp_path / "worker"

    first = faust_workers(APP, env=env, name="first", data_dir=data_dir).wait_ready()
    await produce(kafka_bootstrap, source, [(v.split(b":")[0], v) for v in first_events]
                  + [(m, m + b":x") for m in markers[1]])
    phase1 = {hot + b":0", hot + b":1", hot + b":2", warm + b":0", warm + b":1",
              *(m + b":x" for m in markers[1])}
    await read_committed(kafka_bootstrap, sink, until=_has_all(phase1), timeout=60)
    await read_committed(kafka_bootstrap, deferral, timeout=30,
                         until=_has_all({hot + b":3", hot + b":4"}))
    assert first.stop(timeout=30) == 0, "not a graceful stop"
    # the deferred records held in the deferral agent were not committed: read again later
    assert (await committed_offsets(kafka_bootstrap, app_id, deferral)).get(0, 0) == 0

    second = faust_workers(APP, env=env, name="second", data_dir=data_dir).wait_ready()
    await produce(kafka_bootstrap, source, [(v.split(b":")[0], v) for v in second_events]
                  + [(m, m + b":x") for m in markers[2]])
    out = await read_committed(kafka_bootstrap, sink, timeout=60,
                               until=_has_all({m + b":x" for m in markers[2]}))
    passed = _passed(out, source)
    # hot's level came back: still at its limit (lost, its next 3 would have passed)
    assert {v for v in passed if v.startswith(hot + b":")} == {hot + b":%d" % i for i in range(3)}
    # warm's too: one token left, so one more passes (lost, both would have)
    assert {v for v in passed if v.startswith(warm + b":")} == {warm + b":%d" % i for i in range(3)}
    # nothing lost: every event refused is in the deferral topic, to come back when due
    deferred = await read_committed(kafka_bootstrap, deferral, timeout=30, until=_has_all(
        {hot + b":%d" % i for i in range(3, 8)} | {warm + b":3"}))
    assert {r.value for r in deferred} == {hot + b":%d" % i for i in range(3, 8)} | {warm + b":3"}
    assert second.alive
    for worker in (first, second):
        assert "ConsistencyError" not in worker.logs() and "Traceback" not in worker.logs()
    # every level is in the changelog partition of its key's events (the RocksDB db's)
    levels = await read_committed(kafka_bootstrap, changelog, timeout=30, until=_has_keys(
        {b"b" + hot, b"b" + warm}))
    for record in levels:
        assert record.key is not None and record.key.startswith(b"b")
        assert record.partition == partition_for_key(record.key[1:], 2), record


def _has_keys(keys: set[bytes]) -> Callable[[list[Record]], bool]:
    return lambda records: {r.key for r in records} >= keys
