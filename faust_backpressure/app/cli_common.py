"""What every ``backpressure`` command (and the admin API) checks first: shared by :mod:`.cli`,
:mod:`.ops_cli` and :mod:`.admin_api`, which may not import each other (``cli`` registers
``ops_cli``'s commands)."""

from __future__ import annotations

from collections.abc import Callable, Collection
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


def declared(what: str, name: str, names: Collection[str],
             error: Callable[[str], Exception] = click.UsageError) -> None:
    """A usage error (or ``error``) unless the app declares ``name`` (a pipeline, ...)."""
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise error(f"no {what} {name!r} (declared: {known})")
