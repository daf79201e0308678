"""Putting the patches on an app: :func:`install`, and the faust-streaming versions they were
tested with (:data:`TESTED_FAUST`, :func:`check_faust_version`)."""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from faust.exceptions import ImproperlyConfigured
from faust.transport.drivers.aiokafka import Transport as AIOKafkaTransport
from faust.types import AppT
from faust.types.enums import ProcessingGuarantee

from faust_backpressure.errors import BackpressureError
from faust_backpressure.faust_seam.consumer import _GuardedConsumer
from faust_backpressure.faust_seam.context import context_of
from faust_backpressure.faust_seam.producers import keep_producer_topics
from faust_backpressure.faust_seam.recovery_watch import _RecoveryWatch
from faust_backpressure.faust_seam.standby_records import _KeepStandbyRecords
from faust_backpressure.faust_seam.transactions import (
    InputTransactionManager,
    _CommitBetweenEvents,
    _WriterAcks,
)

#: faust-streaming versions the patches here were tested with: [low, high).
TESTED_FAUST = ((0, 15, 3), (0, 16, 0))


class UnsupportedTransport(BackpressureError, ImproperlyConfigured):
    """The app's broker transport is not aiokafka (``confluent://``): the seam cannot guard it."""


class FaustVersionWarning(UserWarning):
    """The installed faust-streaming is outside the range the seam was tested with."""


def _parse(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_faust_version(installed: str | None = None) -> tuple[int, ...]:
    """Warn (:class:`FaustVersionWarning`) if faust-streaming is not a tested version."""
    if installed is None:
        try:
            installed = version("faust-streaming")
        except PackageNotFoundError:  # e.g. a vendored copy: nothing to compare
            return ()
    found = _parse(installed)
    low, high = TESTED_FAUST
    if not low <= found < high:
        warnings.warn(
            f"faust-backpressure patches Faust internals tested with faust-streaming "
            f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}; found {installed}. "
            "Offsets, rebalances and exactly_once may not be guarded.",
            FaustVersionWarning, stacklevel=2)
    return found


def install(app: AppT) -> None:
    """Put the patches on ``app`` (idempotent; before the app starts its consumer)."""
    context = context_of(app)
    if context.seam_installed:
        return
    check_faust_version()
    if getattr(app, "_consumer", None) is not None:
        warnings.warn(f"faust-backpressure installed on app {app.conf.id!r} after its consumer "
                      "was made: offsets and rebalances are not guarded", stacklevel=2)
    if not isinstance(app.transport, AIOKafkaTransport):
        raise UnsupportedTransport(
            f"faust-backpressure needs Faust's aiokafka transport (broker 'kafka://...'); "
            f"app {app.conf.id!r} uses {type(app.transport).__module__}: its consumer's "
            "offsets, rebalances and transactions are patched for aiokafka only")
    transport: Any = app.transport
    mixins: list[type] = [_GuardedConsumer, _RecoveryWatch, _KeepStandbyRecords]
    guarantee: Any = app.conf.processing_guarantee  # typed as the enum class by Faust
    exactly_once = guarantee == ProcessingGuarantee.EXACTLY_ONCE
    if exactly_once:
        transport.TransactionManager = InputTransactionManager
        mixins.insert(0, _CommitBetweenEvents)
    base = transport.Consumer
    missing = tuple(m for m in mixins if not issubclass(base, m))
    if missing:
        transport.Consumer = type(f"Guarded{base.__name__}", (*missing, base), {})
    keep_producer_topics(transport)
    if exactly_once:
        app.sensors.add(_WriterAcks(app))
    context.seam_installed = True
