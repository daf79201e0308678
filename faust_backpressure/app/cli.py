"""The ``faust -A app backpressure ...`` command group, the plumbing its commands share
(finding the app's installation, reading the ops topic, sending a command to the cluster,
exiting 1 with a message, plain tables) and ``dlq-replay``. The other commands are in
:mod:`.ops_cli`, :mod:`.keyed_cli` and :mod:`.dlq_inspect`: each joins the group as it is
defined (:func:`register_commands` imports them).

Under Faust's command line only, an uncaught :class:`SettingsError` is printed as one line
naming the setting (:func:`install_settings_hook`, see ``config/errors.py``).
"""

from __future__ import annotations

import asyncio
import importlib
import math
import sys
from collections.abc import Callable, Collection, Coroutine, Sequence
from types import TracebackType
from typing import Any, NoReturn, TypeVar

import click

from faust_backpressure.agents import replay_dlq
from faust_backpressure.app.registry import Installation, installed, on_cluster
from faust_backpressure.config import SettingsError
from faust_backpressure.config.errors import one_line
from faust_backpressure.tables.limiter_commands import CommandTimeout, read_compacted
from faust_backpressure.wire.kafka_clients import client_settings
from faust_backpressure.wire.topics import dlq_replay_group, ops_topic

__all__ = ["acknowledged", "backpressure", "declared", "fail", "install_settings_hook",
           "installation", "ops_records", "register_commands", "table", "timeout_option"]

_ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], Any]
#: The modules whose commands join the group (each with ``@backpressure.command``).
_COMMAND_MODULES = ("ops_cli", "keyed_cli", "dlq_inspect")


@click.group(name="backpressure")
def backpressure() -> None:
    """faust-backpressure commands."""


_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


def installation(ctx: click.Context) -> Installation:
    """The ``Backpressure`` of the app of ``faust -A module`` (or of ``app.main()``: the app
    itself); a usage error (naming the command) when there is no app or none installed."""
    from faust.cli.base import find_app

    state: Any = ctx.find_root().obj
    if state is None or not getattr(state, "app", None):  # faust: faust.cli's state
        raise click.UsageError(f"give the app: faust -A module backpressure {ctx.info_name} ...")
    try:
        return installed(find_app(state.app))
    except LookupError as exc:
        raise click.UsageError(str(exc)) from None


def declared(what: str, name: str, names: Collection[str],
             error: Callable[[str], Exception] = click.UsageError) -> None:
    """A usage error (or ``error``) unless the app declares ``name`` (a pipeline, ...)."""
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise error(f"no {what} {name!r} (declared: {known})")


def fail(message: str) -> NoReturn:
    """Exit 1 (the cluster did not do it), saying why on stderr."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def acknowledged(bp: Installation, send: Callable[..., Coroutine[Any, Any, _T]],
                 *args: Any, **kwargs: Any) -> _T:
    """Run ``send`` on the cluster (:func:`~.registry.on_cluster`); exit 1 when the cluster
    does not acknowledge it in time."""
    try:
        return asyncio.run(on_cluster(bp, send, *args, **kwargs))
    except CommandTimeout as exc:
        fail(str(exc))


def ops_records(bp: Installation) -> dict[str, Any]:
    """The latest record per key of the app's ops topic (see :mod:`.pause`)."""
    return asyncio.run(read_compacted(client_settings(bp.app, "ops"),
                                      ops_topic(str(bp.app.conf.id))))


def timeout_option(help: str | None = None) -> Callable[[_F], _F]:
    return click.option("--timeout", type=float, default=30.0, show_default=True, help=help)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """``rows`` under ``header`` in aligned columns (None ``-``, numbers with separators)."""
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


@backpressure.command(name="dlq-replay")
@click.argument("pipeline")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Replay at most N records.")
@click.option("--error-type", default=None, help="Only records whose bp.error.type is T.")
@click.option("--to", "to", default=None, help="Target topic (default: the pipeline's source).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Records per second (default: FAUST_BP_REPLAY_RATE, 1000).")
@click.option("--from-beginning", is_flag=True, default=False,
              help="Re-read the whole DLQ, not only what earlier replays have not seen.")
@click.pass_context
def dlq_replay(ctx: click.Context, pipeline: str, limit: int | None, error_type: str | None,
               to: str | None, rate: float | None, from_beginning: bool) -> None:
    """Re-publish a pipeline's dead-lettered records to its source, rate-limited."""
    bp = installation(ctx)
    app: Any = bp.app
    declared("pipeline", pipeline, bp.pipelines)
    pipe = bp.pipelines[pipeline]
    kafka = client_settings(app, "dlq-replay")
    target = to or pipe.source_topic_name
    with click.progressbar(length=limit or 0, label=f"replaying {pipe.dlq_topic_name}",
                           show_pos=True) as bar:
        report = asyncio.run(replay_dlq(
            kafka, pipeline=pipeline, dlq_topic=pipe.dlq_topic_name, target_topic=target,
            group_id=dlq_replay_group(app.conf.id, pipeline), limit=limit,
            error_type=error_type, rate=rate or bp.settings.replay_rate,
            from_beginning=from_beginning, progress=bar.update))
    click.echo(report.summary())


def register_commands() -> None:
    """Add the ``backpressure`` group to the ``faust`` command line (once per process: the
    command line is Faust's, one per process, and remembers it)."""
    from faust.cli.base import cli

    if cli.commands.get(backpressure.name or "") is backpressure:
        return
    for module in _COMMAND_MODULES:
        importlib.import_module(f"faust_backpressure.app.{module}")
    cli.add_command(backpressure)


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


class _OneLineSettingsErrors:
    """A ``sys.excepthook``: an uncaught error caused by a SettingsError is one line on stderr;
    anything else goes to the hook it replaced."""

    def __init__(self, previous: _ExceptHook) -> None:
        self.previous = previous

    def __call__(self, kind: type[BaseException], value: BaseException,
                 tb: TracebackType | None) -> None:
        found = _settings_error(value)
        if found is None:
            self.previous(kind, value, tb)
        else:
            print(one_line(found), file=sys.stderr, flush=True)


def install_settings_hook() -> bool:
    """Print an uncaught SettingsError as one line from now on (once per process); whether it
    was installed now."""
    if isinstance(sys.excepthook, _OneLineSettingsErrors):
        return False
    sys.excepthook = _OneLineSettingsErrors(sys.excepthook)
    return True


# Here, at import, not in the settings' validator: under ``faust -A app ...`` the app module,
# importing the library, runs before any bad setting can be read, and a host process that only
# imports the library keeps its own hook. Faust's command line (``faust -A app worker``, our
# ``backpressure`` commands) loads ``faust.cli.base`` before it imports the app; any other
# process loads it later, if at all (``register_commands`` loads it).
if "faust.cli.base" in sys.modules:
    install_settings_hook()
