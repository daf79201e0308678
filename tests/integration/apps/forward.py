"""Forwards each record of the source topic to the sink, tagged with the worker that did it."""

import os

import faust

from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ["FBP_APP_ID"], **fast_faust_settings())
source = app.topic(os.environ["FBP_SOURCE"], key_type=bytes, value_type=bytes,
                   key_serializer="raw", value_serializer="raw")
sink = app.topic(os.environ["FBP_SINK"], key_type=bytes, value_type=bytes,
                   key_serializer="raw", value_serializer="raw")
worker_name = os.environ.get("FBP_WORKER_NAME", "worker").encode()


@app.agent(source)
async def forward(stream: faust.StreamT[bytes]) -> None:
    async for event in stream.events():
        await sink.send(key=event.key, value=event.value,
                        headers={"worker": worker_name,
                                 "partition": str(event.message.partition).encode()})
