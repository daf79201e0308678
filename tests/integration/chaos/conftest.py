"""Fixtures of the chaos tests: brokers of their own, which they may stop and restart.

The session's broker (``kafka_bootstrap``) is shared by every test and must never go down.
``own_broker`` is a fresh :class:`LocalKafkaBroker` for one test. ``chaos_broker`` is one broker
shared by a module's chaos runs (each uses topics and a group of its own), restarted if a run
before left it down; that module's tests run on one xdist worker (``xdist_group``, with
``--dist loadgroup``): one broker start for all of them, and never two chaos runs at once
fighting for the machine's 2 cores.
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


@pytest.fixture(scope="module")
def _module_broker() -> Iterator[LocalKafkaBroker]:
    broker = LocalKafkaBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def chaos_broker(_module_broker: LocalKafkaBroker) -> LocalKafkaBroker:
    """The module's broker, up (restarted if a test before left it down)."""
    if not _module_broker.running:
        _module_broker.restart()
    return _module_broker
