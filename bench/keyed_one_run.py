#!/usr/bin/env python3
"""One run of ``bench/keyed.py``'s workload in a process of its own, for a profiler (py-spy),
with aiokafka's produce requests counted.

Run: ``PYTHONPATH=. python bench/keyed_one_run.py fill new K`` (fills a source topic with K keys'
workload, prints its name), then ``py-spy record -r 200 -f raw -o OUT -- python
bench/keyed_one_run.py plain|keyed SOURCE K`` for each way. Prints the run's events/s, CPU
µs/event, the keyed gate's counters, the changelog records, and the produce requests this
process sent: how many, how many partition batches, and by topic (sink, changelog, deferral)
batches and records. Uses ``$KAFKA_BOOTSTRAP_SERVERS``. ``bench/pyspy_diff.py`` compares two
profiles.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from typing import Any

from aiokafka.producer.sender import Sender

from bench.keyed import PARTITIONS, Workload, one_run
from faust_backpressure.testing.kafka_io import create_topics, produce

COUNTS: dict[str, Any] = {"requests": 0, "batches": 0, "by_topic": {}}
_send_produce_req = Sender._send_produce_req


async def _counted(self: Any, node_id: int, batches: dict[Any, Any]) -> None:
    COUNTS["requests"] += 1
    COUNTS["batches"] += len(batches)
    for tp, batch in batches.items():
        kind = ("changelog" if "changelog" in tp.topic else
                "deferral" if "deferred" in tp.topic else "sink")
        seen = COUNTS["by_topic"].setdefault(kind, [0, 0])
        seen[0] += 1
        seen[1] += batch.record_count
    await _send_produce_req(self, node_id, batches)


async def main(kind: str, source: str, keys: int) -> None:
    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    work = Workload(keys, 3, 0.1, 3, 1.0, 64 * 1024)
    sink = f"bench-keyed-one-sink-{uuid.uuid4().hex[:6]}"
    if source == "new":
        source = f"bench-keyed-one-src-{uuid.uuid4().hex[:6]}"
        await create_topics(bootstrap, {source: PARTITIONS})
        await produce(bootstrap, source, work.records(), linger_ms=20)
        print(source)
        return
    await create_topics(bootstrap, {sink: PARTITIONS})
    Sender._send_produce_req = _counted  # type: ignore[method-assign]
    run = await one_run(bootstrap, source, sink, work, kind)
    print(f"{kind}: {run.rate:,.0f} events/s, {run.cpu_us:.1f} us CPU/event, counters "
          f"{run.counters}, changelog records {run.changelog:,}, produce requests {COUNTS}",
          flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
