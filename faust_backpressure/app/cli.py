"""``faust -A app backpressure dlq-replay PIPELINE ...`` and ``... set-rate LIMIT RATE --key K``."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from faust_backpressure.agents import replay_dlq
from faust_backpressure.app.registry import installed
from faust_backpressure.tables.kafka import client_settings

__all__ = ["backpressure", "register_commands"]


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
    from faust.cli.base import find_app

    state: Any = ctx.find_root().obj
    if state is None or not getattr(state, "app", None):
        raise click.UsageError("give the app: faust -A module backpressure dlq-replay ...")
    app: Any = find_app(state.app)
    bp = installed(app)
    if pipeline not in bp.pipelines:
        known = ", ".join(sorted(bp.pipelines)) or "none"
        raise click.UsageError(f"no pipeline {pipeline!r} (declared: {known})")
    pipe = bp.pipelines[pipeline]
    kafka = client_settings(app, "dlq-replay")
    target = to or pipe.source_topic_name
    with click.progressbar(length=limit or 0, label=f"replaying {pipe.dlq_topic_name}",
                           show_pos=True) as bar:
        report = asyncio.run(replay_dlq(
            kafka, pipeline=pipeline, dlq_topic=pipe.dlq_topic_name, target_topic=target,
            group_id=f"{app.conf.id}-bp-dlq-replay-{pipeline}", limit=limit,
            error_type=error_type, rate=rate or bp.settings.replay_rate,
            from_beginning=from_beginning, progress=bar.update))
    click.echo(report.summary())


@backpressure.command(name="set-rate")
@click.argument("limit")
@click.argument("rate", type=click.FloatRange(min=0, min_open=True), required=False)
@click.option("--key", required=True, help="The key whose limits to set.")
@click.option("--key-type", type=click.Choice(["str", "bytes", "int"]), default="str",
              help="How the limit's key function returns keys (default str).")
@click.option("--burst", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Burst capacity (default: one second of RATE).")
@click.option("--clear", is_flag=True, default=False, help="Remove the key's own limits.")
@click.pass_context
def set_rate(ctx: click.Context, limit: str, rate: float | None, key: str, key_type: str,
             burst: float | None, clear: bool) -> None:
    """Store one key's rate (and burst) for a keyed limit; every worker reads it."""
    from faust.cli.base import find_app

    state: Any = ctx.find_root().obj
    if state is None or not getattr(state, "app", None):
        raise click.UsageError("give the app: faust -A module backpressure set-rate ...")
    if rate is None and not clear:
        raise click.UsageError("give RATE, or --clear")
    app: Any = find_app(state.app)
    bp = installed(app)
    if limit not in bp.keyed_limits:
        known = ", ".join(sorted(bp.keyed_limits)) or "none"
        raise click.UsageError(f"no keyed limit {limit!r} (declared: {known})")
    typed: Any = key.encode() if key_type == "bytes" else int(key) if key_type == "int" else key

    async def store() -> None:
        try:
            await bp.keyed_limits[limit].set_limits(typed, None if clear else rate, burst)
        finally:
            await app.producer.stop()

    asyncio.run(store())
    click.echo(f"{limit} {key}: " + ("cleared" if clear else f"{rate:g}/s, burst "
                                     f"{burst if burst is not None else rate:g}"))


_registered = False


def register_commands() -> None:
    """Add the ``backpressure`` group to the ``faust`` command line (once per process)."""
    global _registered
    if _registered:
        return
    from faust.cli.base import cli

    cli.add_command(backpressure)
    _registered = True
