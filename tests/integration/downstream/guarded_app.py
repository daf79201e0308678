"""A pipeline that calls the quota service per event through a downstream guard.

Env: FBP_APP_ID, FBP_SOURCE, FBP_SINK, FBP_DLQ, FBP_GUARANTEE (at_least_once|exactly_once),
FBP_QUOTA_URL (the quota service), FBP_WAIT_IN_OPEN (the breaker's wait, seconds),
FBP_PLAIN=1: a plain agent calling through ``service.run`` instead of the pipeline.
"""

import os

import faust

from faust_backpressure.app import Backpressure
from faust_backpressure.testing.quota_client import QuotaClient
from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://",
                processing_guarantee=os.environ.get("FBP_GUARANTEE", "at_least_once"),
                **fast_faust_settings())
bp = Backpressure(app)
service = bp.downstream("quota-api", max_concurrency=8, minimum_calls=5,
                        wait_in_open=float(os.environ.get("FBP_WAIT_IN_OPEN", "0.5")),
                        half_open_calls=1)
client: QuotaClient | None = None


async def call(value: bytes) -> bytes:
    global client
    if client is None:  # made on the worker's loop
        client = QuotaClient(os.environ["FBP_QUOTA_URL"])
    result = await client.call(value.decode())
    service.read_quota_headers(result.quota_headers)  # a quota the service announces, if any
    if not result.ok:
        raise service.slow_down_from_http(result.status, result.retry_after)
    return value


if os.environ.get("FBP_PLAIN"):
    source = app.topic(os.environ["FBP_SOURCE"], key_serializer="raw", value_serializer="raw")
    sink = app.topic(os.environ["FBP_SINK"], key_serializer="raw", value_serializer="raw")

    @app.agent(source, concurrency=4)  # events in progress, as the pipeline keeps 8
    async def calls(stream: faust.StreamT[bytes]) -> None:
        async for key, value in stream.items():
            await sink.send(key=key, value=await service.run(call, value))
else:
    pipeline = bp.pipeline("calls", source=os.environ["FBP_SOURCE"],
                           sink=os.environ["FBP_SINK"], dlq=os.environ["FBP_DLQ"],
                           process=call, downstream=service, max_retries=1,
                           retry_backoff=0.01)
