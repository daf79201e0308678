"""A worker that polls N distributed limiters with ``try_acquire`` every tick and counts admissions.

Env: FBP_APP_ID, FBP_REPORT (topic), FBP_GO_FILE (the load starts when this file exists),
FBP_IDS (N, default 300), FBP_RATE / FBP_BURST (per id, default 50 / 50), FBP_LEASE_TTL
(default 1.0), FBP_TICK (seconds between passes over all ids, default 0.01), FBP_RATE_LEASES
(1: rate leases, 0: token leases; default 1).

Every second it reports ``{"worker", "at", "counts": {second: admitted}, "answered", "lease":
{requests, retries, abandoned, grants}}``: admissions per wall-clock second of this worker, the
lease replies its owner agent has sent so far, and its limiters' wire counters (summed); and
``passes`` / ``gaps``: passes over the ids per second and the longest time between two passes
(how far this process's event loop kept up: a starved loop asks for less than its share);
``owner_delay``: per second, the most its owner's requests waited before it read them.
"""

import asyncio
import json
import os
import time
from collections import Counter

import faust

from faust_backpressure.tables import DistributedRateLimiterFactory
from faust_backpressure.tables.service import limiter_channel
from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://", **fast_faust_settings())
report = app.topic(os.environ["FBP_REPORT"], key_type=bytes, value_type=bytes,
                   key_serializer="raw", value_serializer="raw")
worker = os.environ.get("FBP_WORKER_NAME", "worker")
ttl = float(os.environ.get("FBP_LEASE_TTL", "1.0"))
rate = float(os.environ.get("FBP_RATE", "50"))
burst = float(os.environ.get("FBP_BURST", "50"))
tick = float(os.environ.get("FBP_TICK", "0.01"))
limiters = [DistributedRateLimiterFactory.create_distributed(app, f"id-{i}", rate, burst,
                                                             lease_ttl=ttl)
            for i in range(int(os.environ.get("FBP_IDS", "300")))]
channel = limiter_channel(app)
counts: Counter[int] = Counter()
passes: Counter[int] = Counter()
gaps: dict[int, float] = {}
queued: dict[int, float] = {}  # per second, the longest an owner's request waited (OwnerLoad)


async def poll() -> None:
    next_at = last = time.monotonic()
    while True:
        admitted = 0
        for limiter in limiters:
            if limiter.try_acquire():
                admitted += 1
        sec = int(time.time())
        counts[sec] += admitted
        passes[sec] += 1
        now = time.monotonic()
        gaps[sec] = max(gaps.get(sec, 0.0), now - last)
        load = getattr(channel, "load", None)
        queued[sec] = max(queued.get(sec, 0.0), getattr(load, "delay", 0.0))
        last = now
        next_at += tick
        delay = next_at - time.monotonic()
        if delay < 0:  # behind: do not try to catch up with a burst of passes
            next_at = time.monotonic()
        await asyncio.sleep(max(0.0, delay))


async def flush() -> None:
    while True:
        await asyncio.sleep(1.0)
        now = int(time.time())
        done = {sec: n for sec, n in counts.items() if sec < now}
        for sec in done:
            del counts[sec]
        done_passes = {sec: passes.pop(sec) for sec in list(passes) if sec < now}
        done_gaps = {sec: round(gaps.pop(sec), 3) for sec in list(gaps) if sec < now}
        done_queued = {sec: round(queued.pop(sec), 3) for sec in list(queued) if sec < now}
        lease = Counter[str]()
        for limiter in limiters:
            c = limiter.lease_counters
            lease.update(requests=c.requests, retries=c.retries, abandoned=c.abandoned,
                         grants=c.grants)
        load = getattr(channel, "load", None)
        rtts = sorted(getattr(limiter, "_rtt", 0.0) for limiter in limiters)
        body = {"worker": worker, "at": time.time(), "counts": done, "passes": done_passes,
                "gaps": done_gaps, "owner_delay": done_queued,
                "answered": getattr(channel, "answered", 0), "lease": dict(lease),
                "owner": {"stretch": getattr(load, "stretch", None),
                          "delay": getattr(load, "delay", None),
                          "batches": getattr(channel, "batches", 0)},
                "rtt_median": rtts[len(rtts) // 2] if rtts else None}
        await report.send(key=worker.encode(), value=json.dumps(body).encode())


@app.task
async def run() -> None:
    if os.environ.get("FBP_PROFILE") and os.environ.get("FBP_GO_FILE") == "/nonexistent":
        await profile(*os.environ["FBP_PROFILE"].split(":"))  # the owner alone, from start
        return
    go = os.environ.get("FBP_GO_FILE")
    while go and not os.path.exists(go):
        await asyncio.sleep(0.05)
    tasks = [poll(), flush()]
    if os.environ.get("FBP_PROFILE"):  # "path:seconds": cProfile of this process after go
        tasks.append(profile(*os.environ["FBP_PROFILE"].split(":")))  # {worker} in path
    await asyncio.gather(*tasks)


async def profile(path: str, seconds: str) -> None:
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    await asyncio.sleep(float(seconds))
    profiler.disable()
    profiler.dump_stats(path.replace("{worker}", worker))
