"""The root exception, and the one-line settings hook: installed by the library's command-line
module when Faust's command line imports it, never by the settings' validator."""

from __future__ import annotations

import asyncio
import importlib
import sys

import pytest

import faust_backpressure
from faust_backpressure import BackpressureError, BackpressureSettings, ConflictingOption
from faust_backpressure.agents import DependencyUnavailable, NotCopartitioned, SlowDown
from faust_backpressure.agents.batch import BatchResultError
from faust_backpressure.agents.downstream import WaitAborted
from faust_backpressure.app.admin_api import BadRequest
from faust_backpressure.app.cli import install_settings_hook
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
    (SlowDown, Exception), (BatchResultError, ValueError),
    (DependencyUnavailable, Exception), (WaitAborted, Exception),
    (BrokerError, RuntimeError), (WorkerError, RuntimeError)])
def test_every_library_error_is_a_backpressure_error_and_keeps_its_other_base(
        error: type[Exception], other: type[Exception]) -> None:
    assert issubclass(error, BackpressureError) and issubclass(error, other)
    assert faust_backpressure.BackpressureError is BackpressureError


@pytest.mark.parametrize("faust_cli_loaded", [False, True])
def test_a_bad_setting_never_touches_the_excepthook(
        monkeypatch: pytest.MonkeyPatch, faust_cli_loaded: bool) -> None:
    """The validator only raises: ``Backpressure(app)`` loads Faust's command line, so a
    host process that made one would otherwise get our hook with its first bad setting."""
    if faust_cli_loaded:
        monkeypatch.setitem(sys.modules, "faust.cli.base", sys.modules[__name__])
    else:
        monkeypatch.delitem(sys.modules, "faust.cli.base", raising=False)
    before = sys.excepthook
    with pytest.raises(SettingsError, match="max_consumer_lag"):
        BackpressureSettings(max_consumer_lag=-1)
    with pytest.raises(SettingsError, match="FAUST_BP_REPLAY_RATE"):
        BackpressureSettings.from_env(environ={"FAUST_BP_REPLAY_RATE": "0"})
    assert sys.excepthook is before


def _import_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """Import the library's command-line module afresh, as a new process would."""
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.delitem(sys.modules, "faust_backpressure.app.cli")
    monkeypatch.setattr(faust_backpressure.app, "cli", faust_backpressure.app.cli)
    importlib.import_module("faust_backpressure.app.cli")


def test_imported_outside_the_faust_cli_the_library_leaves_the_excepthook_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "faust.cli.base", raising=False)
    _import_library(monkeypatch)
    assert sys.excepthook is sys.__excepthook__


def test_under_the_faust_cli_an_uncaught_bad_setting_is_printed_as_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "faust.cli.base", sys.modules[__name__])
    _import_library(monkeypatch)
    assert sys.excepthook is not sys.__excepthook__
    with pytest.raises(SettingsError) as caught:
        BackpressureSettings(max_consumer_lag=-1)
    # Faust re-raises a top-level app module's import error caused by it
    try:
        raise ValueError("Cannot import 'app'") from caught.value
    except ValueError as wrapped:
        sys.excepthook(ValueError, wrapped, None)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("faust-backpressure: invalid setting: ")
    assert "max_consumer_lag" in err[0]


def test_the_hook_is_installed_once_and_passes_other_errors_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[BaseException] = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: seen.append(value))
    assert install_settings_hook() is True
    hook = sys.excepthook
    assert install_settings_hook() is False and sys.excepthook is hook
    error = RuntimeError("not a setting")
    sys.excepthook(RuntimeError, error, None)
    assert seen == [error]
