"""What Faust's producer buffer holds is sent before a commit.

Faust sends a table's changelog records (``table[key] = value``, ``send_soon``) from its
producer buffer, in a background task its commit does not wait for: a record could be sent
after its event's offset was committed, lost at a crash or (exactly_once) left in a
transaction that may never commit. faust-streaming #177 and #273 touch this; neither fixes it
(docs/reliability.md, "Faust bugs worked around").

:func:`send_buffered` puts a marker at the end of the buffer and waits until the buffer's
task reaches it: every record put before it was handed to the producer (aiokafka's batches,
which Faust's flush, or the transaction's commit, then waits for).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust_backpressure.faust_seam.table_writes import flush_changelog_writers

__all__ = ["send_buffered", "send_table_writes"]

#: How long a commit waits for the buffer: a buffer that does not move in this long (its task
#: stopped, a send that hangs) is not committed past; the next commit asks again.
WAIT = 30.0

log = logging.getLogger("faust_backpressure.faust_seam")


class _Marker:
    """Taken by the buffer's task as a pending message: ``message.channel.publish_message``
    is what the task calls to send one; here it says the task got this far."""

    def __init__(self) -> None:
        self.reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.message = self.channel = self
        self.key = self.value = None  # read as a pending message's by whoever looks

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        if not self.reached.done():
            self.reached.set_result(None)


async def send_buffered(app: Any, timeout: float = WAIT) -> bool:
    """Wait until what ``app``'s producer buffer holds now was handed to the producer; False
    if it did not get there within ``timeout`` (the caller must not commit)."""
    buffer = getattr(app.producer, "buffer", None)
    if buffer is None or app.conf.producer_threaded:  # another queue, in another thread
        return True
    if buffer.state != "running":  # no task to send them: only an empty buffer is sent
        return bool(buffer.pending.empty())
    # A marker even when the queue is empty: its task may be sending the last record taken.
    marker = _Marker()
    buffer.pending.put_nowait(marker)
    try:
        await asyncio.wait_for(asyncio.shield(marker.reached), timeout)
    except asyncio.TimeoutError:
        log.warning("Faust's producer buffer did not send its records in %.0f s: not committing "
                    "past them", timeout)
        return False
    return True


async def send_table_writes(app: Any) -> bool:
    """Before a commit: Faust's buffered table writes, then the keyed limits' batched ones
    (:func:`flush_changelog_writers`), are handed to the producer; False: do not commit."""
    if not await send_buffered(app):
        return False
    await flush_changelog_writers(app)
    return True
