"""A changelog-backed table written from an agent, Faust's way (``table[key] = value``: the
changelog record waits in Faust's producer buffer until its background task sends it).

``FBP_SLOW_KEY`` forces the order a loaded worker can take: that key's changelog record
leaves the buffer ``FBP_SLOW_SECONDS`` after its event was processed (and acked), so a commit
can come first. ``FBP_SEAM=1`` installs faust-backpressure on the app.
"""

import asyncio
import os
from typing import Any

import faust

from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://",
                **fast_faust_settings(processing_guarantee=os.environ["FBP_GUARANTEE"]))
if os.environ.get("FBP_SEAM") == "1":
    from faust_backpressure import Backpressure

    Backpressure(app)

SLOW_KEY = os.environ.get("FBP_SLOW_KEY", "").encode()
SLOW_SECONDS = float(os.environ.get("FBP_SLOW_SECONDS", "0"))

source = app.topic(os.environ["FBP_SOURCE"], key_type=str, value_type=int,
                   key_serializer="raw", value_serializer="json")
values = app.Table("values", default=int, partitions=1, key_type=str, value_type=int)

if SLOW_KEY:
    buffer: Any = app.producer.buffer
    send_pending = buffer._send_pending  # bound before its task starts, which reads it once

    async def _slow_send(fut: Any) -> None:
        if SLOW_KEY in (fut.message.key or b""):
            await asyncio.sleep(SLOW_SECONDS)
        await send_pending(fut)

    buffer._send_pending = _slow_send


@app.agent(source)
async def store(stream: faust.StreamT[int]) -> None:
    async for key, value in stream.items():
        values[key] = value
