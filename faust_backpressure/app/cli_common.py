"""What every ``backpressure`` command checks first (shared by :mod:`.cli` and :mod:`.ops_cli`,
which may not import each other: ``cli`` registers ``ops_cli``'s commands)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import click

__all__ = ["declared", "given_app"]


def given_app(ctx: click.Context, command: str = "") -> Any:
    """The app of ``faust -A module`` (or of ``app.main()``: the app itself); a usage error
    (naming ``command``) when there is none."""
    state: Any = ctx.find_root().obj
    if state is None or not getattr(state, "app", None):
        shown = f"{command} ..." if command else "..."
        raise click.UsageError(f"give the app: faust -A module backpressure {shown}")
    return state.app


def declared(what: str, name: str, names: Collection[str]) -> None:
    """A usage error unless the app declares ``name`` (a pipeline, a keyed limit, ...)."""
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise click.UsageError(f"no {what} {name!r} (declared: {known})")
