"""Three KRaft brokers, replication 3, min.insync.replicas 2, acks=all: a broker dies mid-run.

Two real ``faust worker`` processes run a pipeline under one distributed limiter; the broker
leading the limiter's request partition is SIGKILLed. Nothing may be lost (every input id in
the sink or the DLQ), the limit must hold, and admissions must resume within
``RESUME_WITHIN`` seconds (the figure docs/deploy.md states).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from faust_backpressure.testing.cluster import LocalKafkaCluster
from faust_backpressure.testing.kafka_io import consume, create_topics, produce, read_to_end
from faust_backpressure.testing.workers import FaustWorker, wait_until_settled
from faust_backpressure.wire.kafka_clients import partition_for_key
from tests.conftest import REPO

pytestmark = pytest.mark.kafka

APP = "tests.integration.agents.apps.pipeline"
RATE, BURST = 40.0, 40.0
RECORDS = 1200
FAIL_EVERY = 50  # ids divisible by it go to the DLQ
PARTITIONS = 4  # fast_faust_settings' topic_partitions: the request topic's too
#: The docs' bound: from the SIGKILL to admissions at half the rate again. Measured 6.8-8.9 s
#: in five runs alone on a shared 2-core machine (a new partition leader ~5 s after the kill with
#: the 6 s broker session timeout, then the workers' clients find it and renew their leases).
RESUME_WITHIN = 30.0
#: ... when the workers rebalanced as well (records reprocessed: what was not yet committed).
#: Measured 18.5 s alone. (Killing their group's coordinator too does not do it: 6.7 and 9.6 s.)
RESUME_WITH_REBALANCE = 45.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalKafkaCluster]:
    with LocalKafkaCluster(brokers=3) as started:
        yield started


def worst_window(times: list[float], window: float) -> int:
    """Most admissions in any interval [t, t + window]."""
    return max((bisect.bisect_right(times, t + window) - i for i, t in enumerate(times)),
               default=0)


def resumed_after(times: list[float], killed_at: float, window: float = 2.0) -> float | None:
    """Seconds from the kill to the start of the first ``window`` after the longest pause that
    follows it and which holds at least half the rate's admissions."""
    after = [t for t in times if t >= killed_at]
    if not after:
        return None
    gaps = [(b - a, b) for a, b in zip([killed_at, *after], after, strict=False)]
    _, resumed = max(gaps)
    for i, t in enumerate(after):
        if t >= resumed and bisect.bisect_right(after, t + window) - i >= RATE * window / 2:
            return t - killed_at
    return None


async def test_sigkill_of_the_request_partition_leader(cluster: LocalKafkaCluster) -> None:
    run = uuid.uuid4().hex[:6]
    app_id, source, sink, dlq = (f"three-{label}-{run}" for label in ("app", "src", "out", "dlq"))
    await create_topics(cluster.bootstrap_servers, {source: PARTITIONS, sink: 2, dlq: 1},
                        replication=3)
    env = {"KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap_servers, "FBP_APP_ID": app_id,
           "FBP_SOURCE": source, "FBP_SINK": sink, "FBP_DLQ": dlq,
           "FBP_FAIL_EVERY": str(FAIL_EVERY), "FBP_LIMITER_ID": f"shared:{RATE:g}:{BURST:g}",
           "FBP_REPLICATION": "3", "FAUST_BP_INTERNAL_REPLICATION_FACTOR": "3"}
    workers = [FaustWorker(APP, name=f"w{i}", env=env, cwd=REPO) for i in range(2)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready(timeout=90)
        wait_until_settled(workers, timeout=90)
        requests = f"{app_id}-fbp-limiter-requests"
        partition = partition_for_key(b"shared", PARTITIONS)
        ids = [b"id-%d" % i for i in range(RECORDS)]
        await produce(cluster.bootstrap_servers, source, ((i, i) for i in ids))
        await consume(cluster.bootstrap_servers, sink, until=int(RATE * 4), timeout=60)
        leader = await asyncio.to_thread(cluster.leader_of, requests, partition)
        offsets = await _partitions(cluster.bootstrap_servers, "__consumer_offsets")
        coordinator = await asyncio.to_thread(cluster.leader_of, "__consumer_offsets",
                                              coordinator_partition(app_id, offsets))
        cluster.kill(leader)
        killed_at = time.time()
        survivors = cluster.live_bootstrap()

        expected = set(ids)
        deadline = time.monotonic() + 100
        while True:
            out = await read_to_end(survivors, sink)
            dead = await read_to_end(survivors, dlq)
            seen = {r.value for r in out} | {r.value for r in dead}
            if expected <= seen or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
        assert not expected - seen, f"lost {len(expected - seen)} of {RECORDS}"
        assert {r.value for r in dead} == {i for i in ids if int(i[3:]) % FAIL_EVERY == 0}

        # A producer retry resends a record with its timestamp: one admission, counted once.
        times = sorted({(r.value, r.timestamp / 1000) for r in [*out, *dead]},
                       key=lambda pair: pair[1])
        stamps = [t for _, t in times]
        for window in (1.0, 5.0):
            assert worst_window(stamps, window) <= RATE * window + BURST, window
        resumed = resumed_after(stamps, killed_at)
        pauses = [b - a for a, b in itertools.pairwise(stamps) if b > killed_at]
        per_second = [sum(1 for t in stamps if killed_at + s <= t < killed_at + s + 1)
                      for s in range(45)]
        reprocessed = len(times) - RECORDS  # admitted again (a new timestamp)
        rebalanced = reprocessed > 0
        print(f"\nkilled node {leader} (leader of {requests}[{partition}]; the group's "
              f"coordinator: {'yes' if coordinator == leader else 'no'}); "
              f"reprocessed {reprocessed}; "
              f"longest pause after the kill {max(pauses, default=0):.1f} s; "
              f"admissions at >= half the rate again {resumed} s after it; "
              f"records lost 0; duplicates {len(out) + len(dead) - RECORDS}; "
              f"cluster started in {cluster.startup_seconds:.1f} s; "
              f"admissions per second after the kill {per_second}")
        bound = RESUME_WITH_REBALANCE if rebalanced else RESUME_WITHIN
        assert resumed is not None and resumed <= bound, (resumed, rebalanced)
        described = await _replicas(survivors, requests)
        assert described == 3
    finally:
        failed = not all(w.alive for w in workers)
        for worker in workers:
            worker.stop(timeout=10)
            if failed:
                print(f"\n===== {worker.name} =====\n{worker.logs()[-6000:]}")
            worker.cleanup()


def coordinator_partition(group_id: str, partitions: int) -> int:
    """The ``__consumer_offsets`` partition whose leader coordinates ``group_id`` (Kafka:
    ``Utils.abs(groupId.hashCode()) % offsets.topic.num.partitions``)."""
    h = 0
    for char in group_id:
        h = (31 * h + ord(char)) & 0xFFFFFFFF
    return (h & 0x7FFFFFFF) % partitions


async def _partitions(bootstrap: str, topic: str) -> int:
    return len(await _describe(bootstrap, topic))


async def _replicas(bootstrap: str, topic: str) -> int:
    return min(len(p["replicas"]) for p in await _describe(bootstrap, topic))


async def _describe(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """The topic's partitions as the admin client describes them."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return list(described["partitions"])
    finally:
        await admin.close()
