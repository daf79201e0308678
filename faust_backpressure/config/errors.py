"""A bad setting read at start-up is one clear line, not a traceback.

Under ``faust -A app worker`` the app module is imported by Faust's ``find_app``, which turns
any import error into a 50-line chain starting with ``AttributeError: module ... has no
attribute ...``. :func:`settings_errors` re-raises a settings ``ValueError`` as
:class:`SettingsError`; under Faust's command line (only there: a library must not change a
process-wide hook of its host) it also installs a ``sys.excepthook`` that prints an *uncaught*
``SettingsError`` as one line naming the setting (exit code 1 as for any uncaught error).
Caught errors and every other exception are untouched.

A worker that finds at run time that it must not go on (:class:`FatalError`, e.g. a stream that
is not co-partitioned with its keyed limit) shows the same kind of line (:func:`one_line`) and
exits with code 1 too (``faust_seam.crash_worker``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from faust_backpressure.errors import BackpressureError

__all__ = ["FatalError", "SettingsError", "one_line", "settings_errors"]


class SettingsError(BackpressureError, ValueError):
    """An invalid setting; the message starts with the setting's name."""


class FatalError(BackpressureError, RuntimeError):
    """Found by a running worker: it must not go on (it exits with code 1, one line)."""

    #: What went wrong, in a few words: the start of the line.
    kind = "cannot run"


def one_line(error: BaseException) -> str:
    """The line a start-up error is shown as (stderr, no traceback)."""
    kind = "invalid setting" if isinstance(error, SettingsError) else getattr(
        error, "kind", type(error).__name__)
    return f"faust-backpressure: {kind}: {error}"


def _settings_error(error: BaseException | None) -> SettingsError | None:
    """The SettingsError in ``error``'s chain: Faust (mode) re-raises an import error of a
    top-level app module as ``ValueError("Cannot import 'app': ...")`` caused by it."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, SettingsError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _one_line_hook(previous: object) -> object:
    def hook(kind: type[BaseException], value: BaseException,
             tb: TracebackType | None) -> None:
        found = _settings_error(value)
        if found is not None:
            print(one_line(found), file=sys.stderr, flush=True)
            return
        previous(kind, value, tb)  # type: ignore[operator]
    hook._bp_settings_hook = True  # type: ignore[attr-defined]
    return hook


def _in_faust_cli() -> bool:
    """Whether this process runs Faust's command line (``faust -A app worker``, ``app.main()``,
    our ``backpressure`` commands): it imports the app through ``faust.cli.base``."""
    return "faust.cli.base" in sys.modules


def _install_hook() -> None:
    if _in_faust_cli() and not getattr(sys.excepthook, "_bp_settings_hook", False):
        sys.excepthook = _one_line_hook(sys.excepthook)  # type: ignore[assignment]


@contextmanager
def settings_errors() -> Iterator[None]:
    """Inside: a ``ValueError`` becomes a :class:`SettingsError` printed as one line if
    nothing catches it."""
    try:
        yield
    except SettingsError:
        _install_hook()
        raise
    except ValueError as exc:
        _install_hook()
        raise SettingsError(str(exc)) from None
