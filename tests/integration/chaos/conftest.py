"""Fixtures of the chaos tests: a broker of their own, which they may stop and restart.

The session's broker (``kafka_bootstrap``) is shared by every test and must never go down; a
chaos test gets a fresh :class:`LocalKafkaBroker` and halts it as it likes.

Not one broker per module: the chaos harness restarts the broker from a thread
(``asyncio.to_thread``), and a broker dies with the thread that launched it (the launcher's
parent-death signal is per thread), so it went down when the test's event loop closed its
executor, and the next test found no broker.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from faust_backpressure.testing.broker import LocalKafkaBroker


@pytest.fixture
def own_broker() -> Iterator[LocalKafkaBroker]:
    """A fresh local broker for this test alone (removed, data and all, afterwards)."""
    broker = LocalKafkaBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
