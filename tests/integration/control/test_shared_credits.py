"""A credit window shared by a stage's workers, against the real broker with two real
``faust worker`` processes: the stage as a whole stops one window ahead of the downstream
(with a window per worker, two windows)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from faust_backpressure.testing.kafka_io import consume, create_topics, end_offsets, produce
from faust_backpressure.testing.workers import FaustWorker, wait_until_settled

pytestmark = pytest.mark.kafka

APP = "tests.integration.agents.apps.credit_stage"
WINDOW = 60


@pytest.mark.parametrize("shared", [True, False])
async def test_a_shared_window_bounds_the_whole_stage(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker], shared: bool) -> None:
    source, sink, billing = unique_name("src"), unique_name("priced"), unique_name("billing")
    await create_topics(kafka_bootstrap, {source: 4, sink: 1})
    env = {"FBP_APP_ID": unique_name("app"), "FBP_SOURCE": source, "FBP_SINK": sink,
           "FBP_BILLING": billing, "FBP_WINDOW": str(WINDOW), "FBP_SHARED": "1" if shared
           else "0"}
    workers = [faust_workers(APP, name=name, env=env) for name in ("alpha", "beta")]
    for worker in workers:
        worker.wait_ready()
    await asyncio.to_thread(wait_until_settled, workers)
    for worker in workers:  # each has counted both (a worker counted alone has no say then)
        await asyncio.to_thread(worker.wait_for_log, r"credit flow \S+: 2 member\(s\)",
                                new_only=False, what="both members counted")
    ids = [b"id-%03d" % i for i in range(400)]
    await produce(kafka_bootstrap, source, ((i, i) for i in ids))  # keys: all 4 partitions
    await consume(kafka_bootstrap, sink, until=WINDOW // 2, timeout=30)
    stalled = await stopped_at(kafka_bootstrap, sink)  # billing processes nothing
    print(f"\nshared={shared}: 2 workers, window {WINDOW}: stopped at {stalled} records")
    # The design's bounds (docs/control-loop.md): each worker's credits are at most its share
    # less its own records not yet processed, so the stage never has more than its window
    # outstanding, plus one event per worker between the gate and its send; the shared
    # backlog split in two may stop it up to members - 1 records short.
    stage = WINDOW if shared else 2 * WINDOW
    assert stage - 1 <= stalled <= stage + 2, stalled


async def stopped_at(bootstrap: str, topic: str, quiet: float = 2.0,
                     timeout: float = 30.0) -> int:
    """The topic's record count once it has not grown for ``quiet`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = -1, loop.time()
    while loop.time() < deadline:
        count = sum((await end_offsets(bootstrap, topic)).values())
        if count != last:
            last, since = count, loop.time()
        elif loop.time() - since >= quiet:
            return count
        await asyncio.sleep(0.25)
    raise AssertionError(f"{topic} still growing after {timeout} s: {last} records")
