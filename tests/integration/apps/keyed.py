"""A keyed limit on a forwarding agent, configured by environment (real-worker tests).

``FBP_KEY=record`` limits by the record key; ``FBP_KEY=value`` by the value's text before ":"
(not the record key: a stream that is not co-partitioned). Each forwarded record carries the
time it was admitted and the topic it came from (the source, or the deferral topic).
"""

import os
import time

import faust

from faust_backpressure import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://",
                processing_guarantee=os.environ.get("FBP_GUARANTEE", "at_least_once"),
                **fast_faust_settings())
bp = Backpressure(app, settings=BackpressureSettings.from_env())  # FAUST_BP_SECRET
source = app.topic(os.environ["FBP_SOURCE"], key_type=bytes, value_type=bytes,
                   key_serializer="raw", value_serializer="raw")
sink = app.topic(os.environ["FBP_SINK"], key_type=bytes, value_type=bytes,
                 key_serializer="raw", value_serializer="raw")
by_value = os.environ.get("FBP_KEY", "record") == "value"
limit = bp.rate_limit_per_key(
    "per-key", key=(lambda e: e.value.split(b":")[0]) if by_value else None,
    tokens_per_second=float(os.environ.get("FBP_RATE", "10")),
    burst_capacity=float(os.environ.get("FBP_BURST", "5")),
    partitions=int(os.environ.get("FBP_PARTITIONS", "2")))


@app.agent(source)
@limit
async def forward(stream: faust.StreamT[bytes]) -> None:
    async for event in stream.events():
        await sink.send(key=event.key, value=event.value,
                        headers={"at": repr(time.time()).encode(),
                                 "via": event.message.topic.encode(),
                                 "partition": str(event.message.partition).encode()})
