"""A bad setting read at start-up is one clear line, not a traceback.

Under ``faust -A app worker`` the app module is imported by Faust's ``find_app``, which turns
any import error into a 50-line chain starting with ``AttributeError: module ... has no
attribute ...``. :func:`settings_errors` re-raises a settings ``ValueError`` as
:class:`SettingsError`, and does nothing else: the ``sys.excepthook`` that prints an *uncaught*
``SettingsError`` as one line naming the setting (exit code 1 as for any uncaught error) is
installed by the library's command-line module (``app/cli.py``) when Faust's command line
imports the library, and never otherwise (a library must not change a process-wide hook of its
host).

A worker that finds at run time that it must not go on (:class:`FatalError`, e.g. a stream that
is not co-partitioned with its keyed limit) shows the same kind of line (:func:`one_line`) and
exits with code 1 too (``faust_seam.crash_worker``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def settings_errors() -> Iterator[None]:
    """Inside: a ``ValueError`` becomes a :class:`SettingsError` (no other effect: the one-line
    printing of an uncaught one is the command line's, ``app/cli.py``)."""
    try:
        yield
    except SettingsError:
        raise
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
