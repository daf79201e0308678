"""The plumbing every ``backpressure`` command shares: finding the app's installation, reading
the ops topic, sending a command to the cluster, exiting 1 with a message, plain tables.
:mod:`.cli`, :mod:`.ops_cli`, :mod:`.keyed_cli` and :mod:`.dlq_inspect` use it (and the admin
API :func:`declared`); none of them imports another (``cli`` registers the others' commands).
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable, Collection, Coroutine, Sequence
from typing import Any, NoReturn, TypeVar

import click

from faust_backpressure.app.registry import Installation, installed, on_cluster
from faust_backpressure.tables.limiter_commands import CommandTimeout, read_compacted
from faust_backpressure.wire.kafka_clients import client_settings
from faust_backpressure.wire.topics import ops_topic

__all__ = ["acknowledged", "declared", "fail", "installation", "ops_records", "table",
           "timeout_option"]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


def installation(ctx: click.Context) -> Installation:
    """The ``Backpressure`` of the app of ``faust -A module`` (or of ``app.main()``: the app
    itself); a usage error (naming the command) when there is no app or none installed."""
    from faust.cli.base import find_app

    state: Any = ctx.find_root().obj
    if state is None or not getattr(state, "app", None):
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
