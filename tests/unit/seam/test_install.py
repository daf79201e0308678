"""install() refuses what it cannot guard, with a message naming why."""

from __future__ import annotations

import faust
import pytest
from faust.exceptions import ImproperlyConfigured

from faust_backpressure.errors import BackpressureError
from faust_backpressure.faust_seam import UnsupportedTransport, install


class OtherTransport:
    """Stands for a transport that is not aiokafka's (e.g. ``confluent://``, whose driver
    needs confluent-kafka, not installed here)."""


def test_an_app_on_another_transport_is_refused_by_name() -> None:
    app = faust.App("refused-transport", broker="kafka://127.0.0.1:9")
    app._transport = OtherTransport()  # type: ignore[assignment]
    with pytest.raises(UnsupportedTransport, match="aiokafka transport") as raised:
        install(app)
    assert "refused-transport" in str(raised.value)
    assert isinstance(raised.value, BackpressureError)
    assert isinstance(raised.value, ImproperlyConfigured)  # what Faust raises for bad config


def test_an_aiokafka_app_is_patched_once() -> None:
    app = faust.App("guarded-transport", broker="kafka://127.0.0.1:9")
    install(app)
    consumer_class = app.transport.Consumer
    install(app)
    assert app.transport.Consumer is consumer_class
    assert consumer_class.__name__.startswith("Guarded")
