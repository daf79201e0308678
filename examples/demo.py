"""The main job: a Faust worker forwards a topic on a local Kafka broker while a producer feeds it.

``make demo`` (or ``python -m examples.demo``) starts the project's own Kafka broker (or uses
``$KAFKA_BOOTSTRAP_SERVERS``), creates fresh topics, starts a real ``faust worker``, produces
records, prints progress, and exits 0 once every record came out the other side.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.kafka_io import create_topics
from faust_backpressure.testing.workers import FaustWorker, WorkerError

REPO = Path(__file__).resolve().parents[1]


async def feed(bootstrap: str, topic: str, count: int, progress: dict[str, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, key=b"customer-%d" % (i % 97), value=b"order-%07d" % i)
            progress["in"] = i + 1
        await producer.flush()
    finally:
        await producer.stop()


async def drain(bootstrap: str, topic: str, count: int, progress: dict[str, int],
                deadline: float) -> set[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    seen: set[bytes] = set()
    try:
        while len(seen) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                seen.update(r.value for r in records if r.value is not None)
            progress["out"] = len(seen)
    finally:
        await consumer.stop()
    return seen


async def report(progress: dict[str, int], began: float) -> None:
    while True:
        await asyncio.sleep(1.0)
        print(f"  t={time.monotonic() - began:5.1f}s  produced={progress['in']:>7}  "
              f"forwarded={progress['out']:>7}", flush=True)


async def run(bootstrap: str, count: int, timeout: float) -> int:
    run_id = uuid.uuid4().hex[:8]
    source, sink = f"demo-orders-{run_id}", f"demo-processed-{run_id}"
    await create_topics(bootstrap, {source: 4, sink: 4})
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DEMO_APP_ID": f"fbp-demo-{run_id}",
           "DEMO_SOURCE": source, "DEMO_SINK": sink}
    with FaustWorker("examples.demo_app", name="demo-worker", env=env, cwd=REPO) as worker:
        worker.wait_ready()
        print(f"worker ready; feeding {count} orders into {source}", flush=True)
        began = time.monotonic()
        progress = {"in": 0, "out": 0}
        reporter = asyncio.create_task(report(progress, began))
        try:
            _, seen = await asyncio.gather(
                feed(bootstrap, source, count, progress),
                drain(bootstrap, sink, count, progress, began + timeout))
        finally:
            reporter.cancel()
        elapsed = time.monotonic() - began
        code = worker.stop()
    print(f"records in: {count}  records out: {len(seen)}  "
          f"({len(seen) / elapsed:,.0f} records/s end to end, worker exit code {code})")
    return 0 if len(seen) == count else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--timeout", type=float, default=45.0)
    args = parser.parse_args()
    began = time.monotonic()
    try:
        with kafka_bootstrap() as bootstrap:
            print(f"Kafka ready at {bootstrap} in {time.monotonic() - began:.1f} s", flush=True)
            return asyncio.run(run(bootstrap, args.records, args.timeout))
    except WorkerError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
