#!/usr/bin/env python3
"""How many lease requests one owner answers per second, on its own core.

Run: ``PYTHONPATH=. python bench/owner_throughput.py [--ids 1000] [--rounds 7]``.
Starts its own Kafka broker (or uses ``$KAFKA_BOOTSTRAP_SERVERS``), writes ``ids x 3 workers x
rounds`` lease requests (3 made-up worker ids, each renewing every id ``rounds`` times, seq 1..
rounds; ``--per-record`` of them per record, as a worker's keeper batches them per partition)
to the request topic of a fresh app, then starts ONE real ``faust worker`` of
``tests/integration/distributed/apps/many_ids.py`` (no load of its own): it owns every
partition and answers the backlog. Reported: replies on the grant topic over the time between
the first and the last grant record (each a real grant: a table write whose changelog record
is acknowledged before the grant leaves), and the batches. Writes
``bench/results/owner_throughput.md``. Target (issue 13): >= 2,000 lease requests answered/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.workers import FaustWorker
from faust_backpressure.wire.kafka_clients import partition_for_key
from faust_backpressure.wire.limiter_records import (
    Command,
    LeaseRequest,
    LimiterConfig,
    decode_replies,
    encode_batch,
)

REPO = Path(__file__).resolve().parents[1]
APP = "tests.integration.distributed.apps.many_ids"
PARTITIONS = 4  # the app's topic_partitions (fast_faust_settings)


def requests(ids: int, rounds: int, per_record: int
             ) -> list[tuple[bytes, bytes]]:
    # TTL 10 s: the backlog waits while the worker starts; the owner must not find it stale.
    config = LimiterConfig(rate=50.0, burst=50.0, lease_ttl=10.0)
    now = time.time()
    out = []
    for seq in range(1, rounds + 1):
        for w in range(3):
            # As a worker's keeper sends them: one record per partition and pass, holding
            # the requests of every limiter of that partition that are due.
            by_partition: dict[int, list[LeaseRequest | Command]] = {}
            for i in range(ids):
                lid, wid = f"id-{i}", f"bench-w{w}"
                req = LeaseRequest(request_id=f"{wid}:{lid}:{seq}", limiter_id=lid,
                                   worker_id=wid, demand=100.0, requested=50, sent_at=now,
                                   lease_id=None, unspent=0.0, config=config, seq=seq)
                by_partition.setdefault(partition_for_key(lid.encode(), PARTITIONS),
                                        []).append(req)
            for batch in by_partition.values():
                for start in range(0, len(batch), per_record):
                    out.append(encode_batch(batch[start:start + per_record]))
    return out


async def run(bootstrap: str, ids: int, rounds: int, per_record: int
              ) -> dict[str, float]:
    tag = f"{os.getpid()}-{time.time_ns()}"
    app_id, report = f"bench-owner-{tag}", f"bench-owner-report-{tag}"
    await create_topics(bootstrap, {f"{app_id}-fbp-limiter-requests": PARTITIONS, report: 1})
    backlog = requests(ids, rounds, per_record)
    await produce(bootstrap, f"{app_id}-fbp-limiter-requests", backlog)
    expected = ids * 3 * rounds
    with tempfile.TemporaryDirectory():
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FBP_APP_ID": app_id,
               "FBP_REPORT": report, "FBP_IDS": "1", "FBP_GO_FILE": "/nonexistent"}
        if os.environ.get("FBP_PROFILE"):  # "path:seconds": cProfile of the owner
            env["FBP_PROFILE"] = os.environ["FBP_PROFILE"]
        worker = FaustWorker(APP, name="owner", env=env, cwd=REPO).start()
        try:
            worker.wait_ready(120)

            seen = {"n": 0, "replies": 0, "at": time.monotonic()}

            def done(records: list) -> bool:  # type: ignore[type-arg]
                # All answered, or nothing new for 10 s (requests answered with nothing).
                for r in records[seen["n"]:]:
                    seen["replies"] += len(decode_replies(r.value))
                if len(records) > seen["n"]:
                    seen["n"], seen["at"] = len(records), time.monotonic()
                return seen["replies"] >= expected or (
                    seen["n"] > 0 and time.monotonic() - seen["at"] > 10.0)

            grants = await consume(bootstrap, f"{app_id}-fbp-limiter-grants", until=done,
                                   timeout=600)
        finally:
            worker.cleanup()
    replies = sum(len(decode_replies(g.value)) for g in grants)
    first, last = min(g.timestamp for g in grants), max(g.timestamp for g in grants)
    return {"requests": expected, "replies": replies, "records": len(grants),
            "seconds": (last - first) / 1000.0,
            "per_second": replies / max(1e-3, (last - first) / 1000.0)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ids", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-record", type=int, default=50,
                        help="requests per request-topic record (a worker's keeper batches)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with kafka_bootstrap() as bootstrap:
        result = asyncio.run(run(bootstrap, args.ids, args.rounds, args.per_record))
    text = (f"Date: {time.strftime('%Y-%m-%d %H:%M')}; Python {platform.python_version()}, "
            f"{os.cpu_count()} cores; `PYTHONPATH=. python bench/owner_throughput.py --ids "
            f"{args.ids} --rounds {args.rounds} --per-record "
            f"{args.per_record}`; load 1 min before "
            f"{load_before:.2f}, after {os.getloadavg()[0]:.2f}.\n\n"
            f"One owner answered {result['replies']:,} of {result['requests']:,} lease requests "
            f"({args.ids} ids x 3 workers x {args.rounds} renewals) in {result['seconds']:.1f} s: "
            f"**{result['per_second']:,.0f} requests/s** ({result['records']:,} grant records, "
            f"one per worker per batch). Target: >= 2,000/s.\n")
    out = REPO / "bench" / "results" / "owner_throughput.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Owner throughput\n\n" + text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
