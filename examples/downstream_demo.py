"""Two workers charge 3,000 orders through a payment API with a quota of 200/s that fails for
5 s in the middle: every order is charged once the API answers again, none dead-lettered.

``python -m examples.downstream_demo`` starts the project's Kafka broker (or uses
``$KAFKA_BOOTSTRAP_SERVERS``), a local quota'd HTTP service
(``faust_backpressure.testing.quota_service``), and two ``faust worker`` processes of
``examples/downstream_app.py``; prints what the API saw each second; exits 0 when every order is
in the sink and none in the DLQ.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.kafka_io import create_topics, end_offsets, produce
from faust_backpressure.testing.quota_client import QuotaServiceProcess
from faust_backpressure.testing.workers import FaustWorker, wait_until_settled

REPO = Path(__file__).resolve().parents[1]
ORDERS, QUOTA, OUTAGE_AT, OUTAGE = 3000, 200, 5.0, 5.0


async def run(bootstrap: str, api: QuotaServiceProcess) -> int:
    run_id = uuid.uuid4().hex[:6]
    topics = {"FBP_SOURCE": f"orders-{run_id}", "FBP_SINK": f"charged-{run_id}",
              "FBP_DLQ": f"orders-dlq-{run_id}"}
    await create_topics(bootstrap, {topics["FBP_SOURCE"]: 4, topics["FBP_SINK"]: 4,
                                    topics["FBP_DLQ"]: 1})
    env = {**topics, "FBP_APP_ID": f"downstream-demo-{run_id}", "FBP_PAYMENTS_URL": api.url,
           "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    workers = [FaustWorker("examples.downstream_app", name=f"payer-{i}", env=env, cwd=REPO)
               for i in (1, 2)]
    try:
        for worker in workers:
            worker.start().wait_ready()
        await asyncio.to_thread(wait_until_settled, workers)
        await produce(bootstrap, topics["FBP_SOURCE"],
                      ((b"customer-%d" % (i % 50), b"order-%05d" % i) for i in range(ORDERS)))
        began, failed = time.monotonic(), None
        while (done := sum((await end_offsets(bootstrap, topics["FBP_SINK"])).values())
               ) < ORDERS and time.monotonic() - began < 120:
            elapsed = time.monotonic() - began
            if failed is None and elapsed >= OUTAGE_AT:
                api.admin(fail=True, fail_retry_after=0)
                failed = elapsed
            elif failed is not None and elapsed >= failed + OUTAGE and api.stats()["calls"]:
                api.admin(fail=False)
            stats = api.stats()
            print(f"{elapsed:5.1f} s  charged {done:5d}/{ORDERS}  api: ok {stats['ok']}, "
                  f"429 {stats['rejected_429']}, 503 {stats['failed_503']}", flush=True)
            await asyncio.sleep(1.0)
        api.admin(fail=False)
        dead = sum((await end_offsets(bootstrap, topics["FBP_DLQ"])).values())
    finally:
        for worker in workers:
            worker.stop(timeout=10)
            worker.cleanup()
    print(f"charged {done} of {ORDERS} orders, {dead} dead-lettered")
    return 0 if done >= ORDERS and dead == 0 else 1


def main() -> int:
    with kafka_bootstrap() as bootstrap, QuotaServiceProcess(quota=QUOTA, servers=16,
                                                             service_time=0.02) as api:
        return asyncio.run(run(bootstrap, api))


if __name__ == "__main__":
    sys.exit(main())
