"""Fixtures of the chaos tests: a broker of their own, which they may stop and restart.

The session's broker (``kafka_bootstrap``) is shared by every test and must never go down; a
chaos test gets a second :class:`LocalKafkaBroker` and halts it as it likes.
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
