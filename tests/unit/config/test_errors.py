"""The root exception, and the one-line settings hook only under Faust's command line."""

from __future__ import annotations

import asyncio
import sys

import pytest

import faust_backpressure
from faust_backpressure import BackpressureError, BackpressureSettings, ConflictingOption
from faust_backpressure.agents import DependencyUnavailable, NotCopartitioned, SlowDown
from faust_backpressure.agents.downstream import WaitAborted
from faust_backpressure.app.admin_api import BadRequest
from faust_backpressure.config import SettingsError
from faust_backpressure.config.errors import FatalError
from faust_backpressure.limiters import RateLimitTimeout
from faust_backpressure.limiters.circuit_breaker import CircuitOpenTimeout
from faust_backpressure.limiters.concurrency_limiter import ConcurrencyLimitTimeout
from faust_backpressure.tables.limiter_commands import CommandTimeout
from faust_backpressure.testing.broker import BrokerError
from faust_backpressure.testing.workers import WorkerError
from faust_backpressure.wire.signing import RejectedRecord


@pytest.mark.parametrize(("error", "other"), [
    (SettingsError, ValueError), (FatalError, RuntimeError), (NotCopartitioned, RuntimeError),
    (RateLimitTimeout, asyncio.TimeoutError), (CircuitOpenTimeout, TimeoutError),
    (ConcurrencyLimitTimeout, TimeoutError), (CommandTimeout, TimeoutError),
    (RejectedRecord, ValueError), (BadRequest, ValueError), (ConflictingOption, ValueError),
    (SlowDown, Exception),
    (DependencyUnavailable, Exception), (WaitAborted, Exception),
    (BrokerError, RuntimeError), (WorkerError, RuntimeError)])
def test_every_library_error_is_a_backpressure_error_and_keeps_its_other_base(
        error: type[Exception], other: type[Exception]) -> None:
    assert issubclass(error, BackpressureError) and issubclass(error, other)
    assert faust_backpressure.BackpressureError is BackpressureError


def test_a_bad_setting_outside_the_faust_cli_leaves_the_excepthook_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "faust.cli.base", raising=False)
    before = sys.excepthook
    with pytest.raises(SettingsError, match="max_consumer_lag"):
        BackpressureSettings(max_consumer_lag=-1)
    assert sys.excepthook is before


def test_under_the_faust_cli_an_uncaught_bad_setting_is_printed_as_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "faust.cli.base", sys.modules[__name__])
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    with pytest.raises(SettingsError) as caught:
        BackpressureSettings(max_consumer_lag=-1)
    assert sys.excepthook is not sys.__excepthook__
    sys.excepthook(SettingsError, caught.value, None)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("faust-backpressure: invalid setting: ")
    assert "max_consumer_lag" in err[0]
