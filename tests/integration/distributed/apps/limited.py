"""A worker that spends permits of distributed limiters as fast as they come and reports them.

Env: FBP_APP_ID, FBP_REPORT (topic), FBP_LIMITERS ("id:rate:burst,..."), FBP_LEASE_TTL,
FBP_GO_FILE (demand starts when this file exists), FBP_SECRET, FBP_UPDATE ("id:rate@seconds":
this worker changes the rate that long after go), FBP_STORE, FBP_CONTROL
("id:group:topic:interval": a control loop on that limiter, thresholds scaled down 100x),
FBP_GUARANTEE (at_least_once | exactly_once), FBP_RATE_LEASES ("0": token leases; rate
leases by default).
"""

import asyncio
import dataclasses
import json
import os
import time

import faust
from faust.exceptions import NotReady

from faust_backpressure.app import Backpressure
from faust_backpressure.control import BackpressureThresholds
from faust_backpressure.tables import DistributedRateLimiterFactory
from faust_backpressure.tables.service import find_channel
from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ["FBP_APP_ID"], store=os.environ.get("FBP_STORE", "rocksdict://"),
                processing_guarantee=os.environ.get("FBP_GUARANTEE", "at_least_once"),
                **fast_faust_settings())
report = app.topic(os.environ["FBP_REPORT"], key_type=bytes, value_type=bytes,
                   key_serializer="raw", value_serializer="raw")
worker = os.environ.get("FBP_WORKER_NAME", "worker")
secret = os.environ.get("FBP_SECRET")
ttl = float(os.environ.get("FBP_LEASE_TTL", "1.0"))
limiters = {}
for spec in filter(None, os.environ.get("FBP_LIMITERS", "shared:200:200").split(",")):
    lid, rate, burst = spec.split(":")
    limiters[lid] = DistributedRateLimiterFactory.create_distributed(
        app, lid, float(rate), float(burst), lease_ttl=ttl,
        secret=secret.encode() if secret else None)
if os.environ.get("FBP_MULTI"):  # "id:global_rate:global_burst:consumer_rate:consumer_burst"
    lid, g_rate, g_burst, c_rate, c_burst = os.environ["FBP_MULTI"].split(":")
    limiters[lid] = DistributedRateLimiterFactory.create_multi_tier_distributed(
        app, global_limit=(float(g_rate), float(g_burst)),
        consumer_limit=(float(c_rate), float(c_burst)), rate_limiter_id=lid, lease_ttl=ttl)
control = None
if os.environ.get("FBP_CONTROL"):
    lid, group, topic, interval = os.environ["FBP_CONTROL"].split(":")
    control = Backpressure(app).control_loop(
        limiters[lid], downstream_group=group, downstream_topics=[topic],
        interval=float(interval), name=lid,
        thresholds=BackpressureThresholds(backlog_cleared_lag=10, scaling_threshold=50,
                                          max_consumer_lag=100, critical_lag=200,
                                          cpu_threshold=1.0))  # lag is the signal under test
admitted: dict[str, list[float]] = {lid: [] for lid in limiters}


async def spend(lid: str) -> None:
    limiter = limiters[lid]
    while True:
        await limiter.acquire()
        admitted[lid].append(time.time())


async def flush() -> None:
    while True:
        await asyncio.sleep(0.25)
        for lid, times in admitted.items():
            limiter = limiters[lid]
            counters = getattr(limiter, "lease_counters", None)
            channel = find_channel(app)
            body = {"worker": worker, "limiter": lid, "times": times,
                    "rate": limiter.current_rate_limit,
                    "epoch": getattr(limiter, "epoch", -1),
                    "decisions": len(control.decisions) if control is not None else 0,
                    # on the decider: how many workers' samples reached it
                    "sampled_workers": len(control.samples) if control is not None else 0,
                    # lease messages sent so far (cumulative): new requests and resends
                    "requests": counters.requests if counters is not None else 0,
                    "retries": counters.retries if counters is not None else 0,
                    "lease": (dataclasses.asdict(counters) if counters is not None else {}),
                    # this worker's owner agent has answered for this limiter
                    "owns": channel is not None and lid in channel.owned,
                    "at": time.time()}
            admitted[lid] = []
            try:
                await report.send(key=worker.encode(), value=json.dumps(body).encode())
            except NotReady:  # the worker is stopping: its producer stopped before this task
                return


async def update_later(spec: str) -> None:
    lid, _, rest = spec.partition(":")
    rate, _, delay = rest.partition("@")
    await asyncio.sleep(float(delay))
    limiters[lid].update_rate_limit(float(rate))


@app.task
async def run() -> None:
    go = os.environ.get("FBP_GO_FILE")
    while go and not os.path.exists(go):
        await asyncio.sleep(0.05)
    tasks = [asyncio.ensure_future(spend(lid)) for lid in limiters]
    tasks.append(asyncio.ensure_future(flush()))
    if os.environ.get("FBP_UPDATE"):
        tasks.append(asyncio.ensure_future(update_later(os.environ["FBP_UPDATE"])))
    await asyncio.gather(*tasks)
