"""Sums values per key in a changelog-backed RocksDB table and emits each new total."""

import os

import faust

from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://", **fast_faust_settings())
source = app.topic(os.environ["FBP_SOURCE"], key_type=str, value_type=int,
                   key_serializer="raw", value_serializer="json")
sink = app.topic(os.environ["FBP_SINK"], key_type=str, value_type=int,
                 key_serializer="raw", value_serializer="json")
totals = app.Table("totals", default=int, partitions=int(os.environ.get("FBP_PARTITIONS", "4")),
                   key_type=str, value_type=int)


@app.agent(source)
async def count(stream: faust.StreamT[int]) -> None:
    async for key, value in stream.items():
        totals[key] += value
        await sink.send(key=key, value=totals[key])
