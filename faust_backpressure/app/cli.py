"""``faust -A app backpressure dlq-replay PIPELINE [--limit N] [--error-type T] [--to TOPIC]``;
the operator commands (``status``, ``set-rate`` (with ``--key`` for keyed limits), ``reset``,
``lag``, ...) are in :mod:`.ops_cli`.

Under Faust's command line only, an uncaught :class:`SettingsError` is printed as one line
naming the setting (:func:`install_settings_hook`, see ``config/errors.py``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

import click

from faust_backpressure.agents import replay_dlq
from faust_backpressure.app.cli_common import declared, installation
from faust_backpressure.config import SettingsError
from faust_backpressure.config.errors import one_line
from faust_backpressure.wire.kafka_clients import client_settings
from faust_backpressure.wire.topics import dlq_replay_group

__all__ = ["backpressure", "install_settings_hook", "register_commands"]

_ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], Any]


@click.group(name="backpressure")
def backpressure() -> None:
    """faust-backpressure commands."""


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
    from faust_backpressure.app.dlq_inspect import dlq_inspect
    from faust_backpressure.app.keyed_cli import KEYED_COMMANDS
    from faust_backpressure.app.ops_cli import OPS_COMMANDS

    for command in [*OPS_COMMANDS, *KEYED_COMMANDS]:
        backpressure.add_command(command)
    backpressure.add_command(dlq_inspect)
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


def _imported_by_faust_cli() -> bool:
    """Whether Faust's command line (``faust -A app worker``, our ``backpressure`` commands) is
    importing the library: it loads ``faust.cli.base`` before it imports the app. In any other
    process it is loaded later, if at all (``register_commands`` loads it)."""
    return "faust.cli.base" in sys.modules


# Here, at import, not in the settings' validator: under ``faust -A app ...`` the app module,
# importing the library, runs before any bad setting can be read, and a host process that only
# imports the library keeps its own hook.
if _imported_by_faust_cli():
    install_settings_hook()
