"""The demo's Faust app: forwards every order from the source topic to the sink topic.

Run by ``examples/demo.py`` as a real ``faust worker``; topics and app id come from the
environment so each demo run is independent.
"""

import os

import faust

from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ.get("DEMO_APP_ID", "fbp-demo"), **fast_faust_settings())
orders = app.topic(os.environ.get("DEMO_SOURCE", "demo-orders"),
                   key_serializer="raw", value_serializer="raw")
processed = app.topic(os.environ.get("DEMO_SINK", "demo-processed"),
                      key_serializer="raw", value_serializer="raw")


@app.agent(orders)
async def forward(stream: faust.StreamT[bytes]) -> None:
    async for key, value in stream.items():
        await processed.send(key=key, value=value)
