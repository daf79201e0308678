"""The main job: two Faust workers drain a backlog through one shared limit, bad records to a DLQ.

``make demo`` (or ``python -m examples.demo``) starts the project's own Kafka broker (or uses
``$KAFKA_BOOTSTRAP_SERVERS``), creates fresh topics, starts two real ``faust worker`` processes of
``examples/demo_app.py`` and floods the source topic far faster than the limit. The workers share
one distributed token bucket, so together they process at the limit while the backlog (consumer
lag) waits in Kafka; nothing is dropped. Malformed and invalid orders go to the DLQ with reasons.
It prints progress, then accounts for every order and exits 0 if none was lost and the shared
limit held.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.kafka_io import create_topics
from faust_backpressure.testing.workers import FaustWorker, WorkerError

REPO = Path(__file__).resolve().parents[1]
WORKERS = ("demo-worker-1", "demo-worker-2")


def order(i: int) -> bytes:
    """Mostly valid orders; every 100th is not JSON, every 150th has a bad quantity."""
    if i % 100 == 99:
        return b"{not json %d" % i
    quantity = -1 if i % 150 == 149 else 1 + i % 5
    return json.dumps({"id": f"order-{i:07d}", "customer": f"customer-{i % 97}",
                       "quantity": quantity, "unit_price": 9.99}).encode()


def order_id(record: ConsumerRecord[bytes, bytes]) -> str:
    """The order id in a priced order, or (DLQ) in the original bytes."""
    value = record.value or b""
    try:
        return str(json.loads(value)["id"])
    except (ValueError, KeyError):
        return f"order-{int(value.rsplit(b' ', 1)[-1]):07d}"


async def feed(bootstrap: str, topic: str, count: int, progress: dict[str, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, key=b"customer-%d" % (i % 97), value=order(i))
            progress["in"] = i + 1
        await producer.flush()
    finally:
        await producer.stop()


async def drain(bootstrap: str, topics: dict[str, str], count: int,
                progress: dict[str, int], deadline: float
                ) -> dict[str, list[ConsumerRecord[bytes, bytes]]]:
    consumer = AIOKafkaConsumer(*topics.values(), bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    seen: dict[str, list[ConsumerRecord[bytes, bytes]]] = {kind: [] for kind in topics}
    kind_of = {topic: kind for kind, topic in topics.items()}
    ids: set[str] = set()
    try:
        while len(ids) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                seen[kind_of[tp.topic]].extend(records)
                ids.update(order_id(r) for r in records)
            progress["out"], progress["dlq"] = len(seen["out"]), len(seen["dlq"])
    finally:
        await consumer.stop()
    return seen


async def report(progress: dict[str, int], began: float) -> None:
    last_done, last_t = 0, began
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        done = progress["out"] + progress["dlq"]
        print(f"  t={now - began:5.1f}s  produced={progress['in']:>6}  "
              f"priced={progress['out']:>6}  dlq={progress['dlq']:>4}  "
              f"backlog={progress['in'] - done:>6}  "
              f"rate={(done - last_done) / (now - last_t):>6.0f}/s", flush=True)
        last_done, last_t = done, now


def steady_rate(records: list[ConsumerRecord[bytes, bytes]], skip: float) -> float:
    """Records per second by Kafka timestamp, after the first ``skip`` seconds (the burst)."""
    stamps = sorted(r.timestamp / 1000.0 for r in records)
    if len(stamps) < 2:
        return 0.0
    later = [t for t in stamps if t >= stamps[0] + skip]
    return (len(later) - 1) / (later[-1] - later[0]) if len(later) > 1 else 0.0


async def run(bootstrap: str, count: int, rate: float, timeout: float,
              batch: int = 0) -> int:
    run_id = uuid.uuid4().hex[:8]
    topics = {"in": f"demo-orders-{run_id}", "out": f"demo-priced-{run_id}",
              "dlq": f"demo-dlq-{run_id}"}
    await create_topics(bootstrap, dict.fromkeys(topics.values(), 4))
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DEMO_APP_ID": f"fbp-demo-{run_id}",
           "DEMO_SOURCE": topics["in"], "DEMO_SINK": topics["out"], "DEMO_DLQ": topics["dlq"],
           "DEMO_LIMITER": "demo-orders", "DEMO_RATE": f"{rate:g}", "DEMO_BURST": f"{rate:g}",
           "DEMO_BATCH": str(batch)}
    workers = [FaustWorker("examples.demo_app", name=name, env=env, cwd=REPO)
               for name in WORKERS]
    try:
        for worker in workers:
            worker.start().wait_ready()
        print(f"{len(workers)} workers ready, sharing one limit of {rate:,.0f} orders/s; "
              f"flooding {topics['in']} with {count:,} orders", flush=True)
        began = time.monotonic()
        progress = {"in": 0, "out": 0, "dlq": 0}
        reporter = asyncio.create_task(report(progress, began))
        try:
            _, seen = await asyncio.gather(
                feed(bootstrap, topics["in"], count, progress),
                drain(bootstrap, {"out": topics["out"], "dlq": topics["dlq"]}, count,
                      progress, began + timeout))
        finally:
            reporter.cancel()
        elapsed = time.monotonic() - began
    finally:
        codes = [worker.stop() for worker in workers]
        for worker in workers:
            worker.cleanup()
    return summarize(seen, count, rate, elapsed, codes)


def summarize(seen: dict[str, list[ConsumerRecord[bytes, bytes]]], count: int, rate: float,
              elapsed: float, codes: list[int | None]) -> int:
    out_ids = [order_id(r) for r in seen["out"]]
    dlq_ids = [order_id(r) for r in seen["dlq"]]
    accounted = set(out_ids) | set(dlq_ids)
    lost = count - len(accounted & {f"order-{i:07d}" for i in range(count)})
    duplicates = len(out_ids) + len(dlq_ids) - len(accounted)
    reasons = collections.Counter(
        dict(r.headers).get("bp.error.type", b"?").decode() for r in seen["dlq"])
    achieved = steady_rate(seen["out"] + seen["dlq"], skip=2.0)
    print(f"orders in: {count:,}  priced: {len(seen['out']):,}  dead-lettered: "
          f"{len(seen['dlq']):,} ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))})"
          f"  lost: {lost}  duplicates: {duplicates}")
    print(f"processing rate after the first burst: {achieved:,.0f}/s for a shared limit of "
          f"{rate:,.0f}/s ({len(WORKERS)} workers); wall time {elapsed:.1f} s; "
          f"worker exit codes {codes}")
    ok = lost == 0 and achieved <= rate * 1.05
    print("OK: every order accounted for, the shared limit held" if ok else "FAILED")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="shared limit, orders/s")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=0, metavar="SIZE",
                        help="run the pipeline in batch mode (process_batch=), batches of SIZE")
    args = parser.parse_args()
    if args.batch > args.rate:
        parser.error("--batch must not exceed --rate (the shared bucket's burst)")
    began = time.monotonic()
    try:
        with kafka_bootstrap() as bootstrap:
            print(f"Kafka ready at {bootstrap} in {time.monotonic() - began:.1f} s", flush=True)
            return asyncio.run(run(bootstrap, args.records, args.rate, args.timeout,
                                   args.batch))
    except WorkerError as exc:
        print(f"demo failed: {exc.summary}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
