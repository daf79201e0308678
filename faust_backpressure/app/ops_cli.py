"""Operator commands of the ``backpressure`` group: ``status``, ``set-rate``, ``reset``, ``lag``,
``emergency-stop``, ``restore``, ``pause``, ``resume``, ``breaker`` (``key-status`` and
``key-override`` are in :mod:`.keyed_cli`).

They work against the running cluster through Kafka alone (see :mod:`.ops` and
:mod:`faust_backpressure.tables.limiter_commands`). Exit codes: 0 done, 1 the cluster did not
do it (no acknowledgement, nothing found), 2 a usage error (click's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

import click

from faust_backpressure.app.cli import (
    acknowledged,
    backpressure,
    declared,
    fail,
    installation,
    ops_records,
    table,
    timeout_option,
)
from faust_backpressure.app.keyed_ops import KEY_TYPES, MAX_RATE, parse_key
from faust_backpressure.app.ops import breaker_state, cluster_status, group_lag, send_override
from faust_backpressure.app.pause import send_breaker, send_pause
from faust_backpressure.control.override import Override, operator
from faust_backpressure.tables.limiter_commands import send_limiter_command
from faust_backpressure.wire.kafka_clients import client_settings

__all__ = ["breaker", "emergency_stop", "lag", "pause", "reset", "restore", "resume",
           "set_rate", "status"]

_ACK_TIMEOUT = "Seconds to wait for the owner's acknowledgement."


def _acked_command(name: str, argument: str, reason: str, *options: Callable[[Any], Any]
                   ) -> Callable[[Callable[..., None]], click.Command]:
    """``@backpressure.command`` of an acknowledged change: ARGUMENT, ``options``,
    ``--reason`` (with the help ``reason``) and ``--timeout``, in that order; the function gets
    the context."""
    def command(function: Callable[..., None]) -> click.Command:
        decorators: list[Callable[[Any], Any]] = [
            click.pass_context, timeout_option(), click.option("--reason", default="", help=reason),
            *reversed(options), click.argument(argument)]  # innermost first, as when stacked
        for decorate in decorators:
            function = decorate(function)
        return backpressure.command(name=name)(function)
    return command


@backpressure.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.option("--watch", type=float, default=None, metavar="SECONDS",
              help="Report again every SECONDS until interrupted (with --json: one JSON "
                   "object per line).")
@click.pass_context
def status(ctx: click.Context, as_json: bool, watch: float | None) -> None:
    """Every limiter, control loop and pipeline of the app across all workers."""
    bp = installation(ctx)
    kafka = client_settings(bp.app, "ops")
    if watch is None:
        _show_status(asyncio.run(cluster_status(bp, kafka)), as_json, indent=2)
        return
    if not math.isfinite(watch) or watch <= 0:
        raise click.BadParameter(f"must be a number of seconds > 0, got {watch}",
                                 param_hint="--watch")

    async def every(interval: float) -> None:
        while True:
            _show_status(await cluster_status(bp, kafka), as_json, indent=None)
            sys.stdout.flush()  # a pipe (a script, watch's reader) sees each report at once
            await asyncio.sleep(interval)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends
        asyncio.run(every(watch))


def _show_status(report: dict[str, Any], as_json: bool, indent: int | None) -> None:
    if as_json:
        click.echo(json.dumps(report, indent=indent, sort_keys=True))
        return
    if indent is None:  # watching: one report after the other
        click.echo(f"--- {time.strftime('%H:%M:%S', time.localtime(report['at']))}")
    click.echo(f"app {report['app']}")
    click.echo("\nlimiters")
    click.echo(table([[x["id"], x["rate"], x["configured_rate"], x["decided_rate"],
                        x["severity"], x["emergency"], x["utilization"], x["downstream_lag"],
                        x["workers"], x["reason"]] for x in report["limiters"]],
                      ["id", "rate/s", "configured", "decided", "severity", "emergency",
                       "util", "down-lag", "workers", "reason"]))
    click.echo("\npipelines")
    click.echo(table([[p["name"], p["source"], p["limiter"],
                        f"batches of {p['batch_size']}" if p.get("batch_size") else "per event",
                        _ms(p.get("batch_p99")), p["source_lag"], p["dlq"], p["dlq_records"],
                        p["paused_by"] or p["paused"]]
                       for p in report["pipelines"]],
                      ["name", "source", "limiter", "mode", "batch-p99", "source-lag", "dlq",
                       "dlq-records", "paused"]))
    if report["downstreams"]:
        click.echo("\ndownstream guards (each worker's page has its live breaker and limits)")
        click.echo(table([[d["name"], d["operator"], d["by"], d["slowed_down_now"],
                            d["last_slow_down_by"], d["error_rate"]]
                           for d in report["downstreams"]],
                          ["name", "breaker (operator)", "by", "slowed down now",
                           "last slow-down by", "error rate"]))
    if report["credit_flows"]:
        click.echo("\ncredit flows")
        click.echo(table([[f["name"], f["window"], f["downstream_group"],
                            f["downstream_lag"], f["credits"]] for f in report["credit_flows"]],
                          ["name", "window", "downstream", "down-lag", "credits"]))
    if report["keyed"]:
        _keyed_table(report["keyed"])
    if report["warnings"]:
        click.echo("")
    for warning in report["warnings"]:
        click.echo(f"WARNING {warning}")


def _ms(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds * 1000:,.0f} ms"


def _keyed_table(keyed: list[dict[str, Any]]) -> None:
    click.echo("\nkeyed limits (rate and burst per key; counts summed over the workers)")
    click.echo(table([[k["name"], k["agent"], k["on_limit"], k["rate"], k["burst"],
                        k["workers"], k["keys_tracked"], k["keys_limited"],
                        k["deferred_backlog"], k["admitted_per_s"], k["deferred_per_s"],
                        k["readmitted_per_s"], k["held_back_per_s"], k["shed_per_s"],
                        k["key_overrides"]]
                       for k in keyed],
                      ["limit", "agent", "on limit", "rate/s", "burst", "workers", "tracked",
                       "limited", "backlog", "admitted/s", "deferred/s", "readmitted/s",
                       "held back/s", "shed/s", "overrides"]))
    for k in keyed:
        if k["top_limited"]:
            click.echo(f"  {k['name']} most refused keys lately: " + ", ".join(
                f"{t['key']} ({t['refused']:,})" for t in k["top_limited"])
                + f"  [{', '.join(k['key_types'])} keys]")


def _command(ctx: click.Context, limiter_id: str, kind: Literal["update_rate", "reset"],
             rate: float | None, timeout: float) -> None:
    ack = acknowledged(installation(ctx), send_limiter_command, limiter_id, kind, rate=rate,
                        timeout=timeout)
    click.echo(f"{limiter_id}: {'rate set' if kind == 'update_rate' else 'reset'}, "
               f"acknowledged by its owner (epoch {ack.epoch}, rate {ack.rate:g}/s)")


@backpressure.command(name="set-rate")
@click.argument("limiter_id")
@click.argument("rate", type=click.FloatRange(min=0, min_open=True, max=MAX_RATE), required=False)
@timeout_option(_ACK_TIMEOUT)
@click.option("--key", default=None,
              help="A keyed limit: set this key's own rate (LIMITER_ID is the keyed limit).")
@click.option("--key-type", type=click.Choice(KEY_TYPES), default="str",
              help="With --key: how the limit's key function returns keys (default str).")
@click.option("--burst", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --key: burst capacity (default: one second of RATE).")
@click.option("--clear", is_flag=True, default=False,
              help="With --key: remove the key's own limits.")
@click.pass_context
def set_rate(ctx: click.Context, limiter_id: str, rate: float | None, timeout: float,
             key: str | None, key_type: str, burst: float | None, clear: bool) -> None:
    """Set a distributed limiter's shared rate (persisted; a control loop may change it
    again at its next decision), or with --key one key's rate of a keyed limit."""
    if key is not None:
        _set_keyed_rate(ctx, limiter_id, rate, key, key_type, burst, clear)
        return
    if rate is None:
        raise click.UsageError("give RATE")
    _command(ctx, limiter_id, "update_rate", rate, timeout)


@backpressure.command(name="reset")
@click.argument("limiter_id")
@timeout_option(_ACK_TIMEOUT)
@click.pass_context
def reset(ctx: click.Context, limiter_id: str, timeout: float) -> None:
    """Refill a distributed limiter's bucket and clear its counters (the rate is kept)."""
    _command(ctx, limiter_id, "reset", None, timeout)


@backpressure.command(name="lag")
@click.argument("group")
@click.option("--topic", "topics", multiple=True, help="Only these topics (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.pass_context
def lag(ctx: click.Context, group: str, topics: tuple[str, ...], as_json: bool) -> None:
    """Per-partition lag and time-lag (seconds behind) of any consumer group."""
    bp = installation(ctx)
    result = asyncio.run(group_lag(client_settings(bp.app, "ops"), group,
                                   list(topics) or None))
    if not result.partitions:
        fail(f"group {group!r} has no committed offsets" + (
            f" on {', '.join(topics)}" if topics else ""))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(table([[p.topic, p.partition, p.committed, p.end, p.lag, p.time_lag]
                       for p in result.partitions],
                      ["topic", "partition", "committed", "end", "lag", "time-lag s"]))
    click.echo(f"total lag {result.total:,}; oldest unprocessed record "
               f"{result.max_time_lag:.1f} s old")


@_acked_command("emergency-stop", "limiter_id", "Why (kept in the audit trail).",
                click.option("--rate", type=click.FloatRange(min=0, min_open=True, max=MAX_RATE),
                             default=None, help="Hold at this rate (default: the control "
                             "loop's emergency rate)."))
def emergency_stop(ctx: click.Context, limiter_id: str, rate: float | None, reason: str,
                   timeout: float) -> None:
    """Hold a limiter at its emergency rate (or --rate) until `restore`: wins over the
    control loop, persisted, an event on the control topic."""
    state = acknowledged(installation(ctx), send_override,
                          Override.hold(limiter_id, rate=rate, by=operator(), reason=reason),
                          timeout=timeout)
    held = state.get("override") or {}
    click.echo(f"{limiter_id}: held at {held.get('rate', rate)}/s by {held.get('by')} until "
               f"`backpressure restore {limiter_id}`")


@_acked_command("restore", "limiter_id", "Why (kept in the audit trail).")
def restore(ctx: click.Context, limiter_id: str, reason: str, timeout: float) -> None:
    """Release an operator hold: the control loop decides the rate again."""
    state = acknowledged(installation(ctx), send_override,
                          Override.release(limiter_id, by=operator(), reason=reason),
                          timeout=timeout)
    click.echo(f"{limiter_id}: released; the control loop decides again (from "
               f"{state.get('rate')}/s)")


def _pause(ctx: click.Context, pipeline: str, paused: bool, reason: str,
           timeout: float) -> None:
    bp = installation(ctx)
    declared("pipeline", pipeline, bp.pipelines)
    acked, workers = acknowledged(bp, send_pause, pipeline, paused=paused, by=operator(),
                                   reason=reason, timeout=timeout)
    click.echo(f"pipeline {pipeline}: {'paused' if paused else 'resumed'} on {acked} of "
               f"{workers} worker(s)")


@_acked_command("pause", "pipeline", "Why (kept with the pause).")
def pause(ctx: click.Context, pipeline: str, reason: str, timeout: float) -> None:
    """Stop consuming a pipeline on every worker (nothing is lost) until `resume`."""
    _pause(ctx, pipeline, True, reason, timeout)


@_acked_command("resume", "pipeline", "Why.")
def resume(ctx: click.Context, pipeline: str, reason: str, timeout: float) -> None:
    """Resume a paused pipeline on every worker."""
    _pause(ctx, pipeline, False, reason, timeout)


@backpressure.command(name="breaker")
@click.argument("action", type=click.Choice(["open", "close", "auto", "status"]))
@click.argument("dependency")
@click.option("--reason", default="", help="Why (kept in the audit trail).")
@timeout_option("Seconds to wait for every worker's acknowledgement.")
@click.pass_context
def breaker(ctx: click.Context, action: str, dependency: str, reason: str,
            timeout: float) -> None:
    """Force a downstream guard's circuit breaker open (calls wait) or closed (calls pass) on
    every worker, give it back to automatic, or show the operator's state and the last
    slow-down."""
    bp = installation(ctx)
    declared("downstream", dependency, bp.downstreams)
    if action == "status":
        click.echo(json.dumps({"dependency": dependency,
                               **breaker_state(ops_records(bp), dependency)}, indent=2))
        return
    acked, workers = acknowledged(bp, send_breaker, dependency, state=action, by=operator(),
                                  reason=reason, timeout=timeout)
    click.echo(f"breaker {dependency}: {action} on {acked} of {workers} worker(s)")


def _set_keyed_rate(ctx: click.Context, limit: str, rate: float | None, key: str, key_type: str,
                   burst: float | None, clear: bool) -> None:
    """Store one key's rate (and burst) for a keyed limit; every worker reads it."""
    bp = installation(ctx)
    if rate is None and not clear:
        raise click.UsageError("give RATE, or --clear")
    declared("keyed limit", limit, bp.keyed_limits)

    async def store() -> None:
        try:
            await bp.keyed_limits[limit].set_limits(parse_key(key, key_type),
                                                    None if clear else rate, burst)
        finally:
            await bp.app.producer.stop()

    asyncio.run(store())
    click.echo(f"{limit} {key}: " + ("cleared" if clear else f"{rate:g}/s, burst "
                                     f"{burst if burst is not None else rate:g}"))
