"""Operator commands for keyed limits: ``key-status LIMIT KEY`` and ``key-override LIMIT KEY``.

``key-override`` sends a signed record on the ops topic that every worker applies and
acknowledges (see :mod:`.keyed_ops`); ``key-status`` reads Kafka alone: the key's bucket level
in the limit's table changelog (the partition the key's events are on), its limits and where
they come from, and which workers list it among their most refused keys.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Hashable
from typing import Any

import click

from faust_backpressure.agents.keyed import KeyedRateLimitGate, encode_key
from faust_backpressure.agents.keyed_store import describe_key
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
from faust_backpressure.app.keyed_ops import (
    KEY_TYPES,
    MAX_RATE,
    KeyedStatusRecord,
    KeyOverrideCommand,
    parse_key,
)
from faust_backpressure.app.ops import keyed_overrides, keyed_status, signed_records
from faust_backpressure.app.pause import send_key_override
from faust_backpressure.control.override import operator
from faust_backpressure.limiters.keyed_buckets import KeyLimits
from faust_backpressure.tables.limiter_commands import read_compacted
from faust_backpressure.wire.kafka_clients import (
    KafkaClientSettings,
    client_settings,
    partition_for_key,
    records_to_end,
)
from faust_backpressure.wire.topics import ops_topic

__all__ = ["key_override", "key_status"]

_LEVEL = struct.Struct("<dqd")  # the table's (full_at, deferred, late), as agents.keyed
_KEY_TYPE = click.option("--key-type", type=click.Choice(KEY_TYPES), default="str",
                         show_default=True,
                         help="How the limit's key function returns keys.")


async def _latest(kafka: KafkaClientSettings | str, topic: str, key: bytes,
                  partition: int | None) -> bytes | None:
    """The latest value of ``key`` in ``topic`` (in ``partition``, or all of them when None),
    read to the current end; None when there is none (or a tombstone)."""
    value = None
    async for record in records_to_end(kafka, topic, partition=partition):
        if record.key == key:
            value = record.value
    return value


def _partition_of(key: Hashable, partitions: int | None) -> int | None:
    """The source (and table) partition of a str/bytes key; None: read every partition."""
    raw = key if isinstance(key, bytes) else key.encode() if isinstance(key, str) else None
    return None if raw is None or not partitions else partition_for_key(raw, partitions)


def _effective(gate: KeyedRateLimitGate, operator_set: KeyOverrideCommand | None,
               stored: list[float] | None, function: KeyLimits | None
               ) -> tuple[str, float | None, float | None]:
    """Where the key's limits come from, and they (the gate's own precedence)."""
    if operator_set is not None:
        return "operator override (key-override)", operator_set.rate, operator_set.burst
    if stored is not None:
        return "stored override (set_limits / set-rate --key)", stored[0], stored[1]
    if function is not None:
        return "the limits function", function.tokens_per_second, function.burst_capacity
    return ("the limit's default", gate.default.tokens_per_second,
            gate.default.burst_capacity)


async def _key_report(bp: Any, gate: KeyedRateLimitGate, key: Hashable,
                      kafka: KafkaClientSettings | str) -> dict[str, Any]:
    encoded = encode_key(key)
    secret = bp.settings.secret_key
    app_id = str(bp.app.conf.id)
    ops = await read_compacted(kafka, ops_topic(app_id))
    operator_set = {c.key: c for c in keyed_overrides(ops, gate.name, secret)}.get(encoded)
    stored_raw = await _latest(kafka, gate.overrides.changelog_topic.get_topic_name(), encoded, 0)
    stored = json.loads(stored_raw) if stored_raw else None
    function = None if gate.limits is None else gate.limits(key)
    source, rate, burst = _effective(gate, operator_set, stored, function)
    changelog = gate.table.changelog_topic.get_topic_name()
    parts = gate.table.partitions or int(bp.app.conf.topic_partitions)
    partition = _partition_of(key, parts)
    level_raw = await _latest(kafka, changelog, encoded, partition)
    now = time.time()
    level: dict[str, Any] = {"stored": False, "tokens": burst, "deferred": 0}
    if level_raw:
        full_at, deferred, _late = _LEVEL.unpack(level_raw)
        level = {"stored": True, "full_at": full_at, "deferred": deferred,
                 "tokens": float(burst or 0) - max(0.0, full_at - now) * float(rate or 0)}
    shown = describe_key(encoded)
    workers = sorted(r.worker for r in signed_records(ops, f"keyed-status/{gate.name}/",
                                                      KeyedStatusRecord.decode, secret,
                                                      fresh_at=now)
                     if any(t["key"] == shown and t["type"] == type(key).__name__
                             for t in r.body["top_limited"]))
    return {"limit": gate.name, "key": shown, "key_type": type(key).__name__,
            "rate": rate, "burst": burst, "from": source,
            "operator_override": None if operator_set is None else {
                "rate": operator_set.rate, "burst": operator_set.burst, "by": operator_set.by,
                "at": operator_set.at, "reason": operator_set.reason},
            "stored_override": stored, "limits_function": None if function is None else [
                function.tokens_per_second, function.burst_capacity],
            "default": [gate.default.tokens_per_second, gate.default.burst_capacity],
            "table_partition": partition, "level": level,
            "top_limited_on": workers}


@backpressure.command(name="key-status")
@click.argument("limit")
@click.argument("key")
@_KEY_TYPE
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.pass_context
def key_status(ctx: click.Context, limit: str, key: str, key_type: str, as_json: bool) -> None:
    """One key of a keyed limit: its limits and where they come from, its bucket level (from
    the table's changelog) and whether workers list it among their most refused keys."""
    bp = installation(ctx)
    declared("keyed limit", limit, bp.keyed_limits)
    report = asyncio.run(_key_report(bp, bp.keyed_limits[limit], parse_key(key, key_type),
                                     client_settings(bp.app, "ops")))
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    level = report["level"]
    click.echo(f"{limit} key {report['key']!r} ({report['key_type']}): {report['rate']:g}/s, "
               f"burst {report['burst']:g}, from {report['from']}")
    held = report["operator_override"]
    if held:
        click.echo(f"  operator override by {held['by']}"
                   f"{': ' + held['reason'] if held['reason'] else ''}")
    click.echo(f"  bucket: {level['tokens']:.1f} tokens now, {level['deferred']} deferred "
               f"({'stored in' if level['stored'] else 'full: no entry in'} table partition "
               f"{report['table_partition'] if report['table_partition'] is not None else '?'})")
    click.echo("  among the most refused keys lately on: "
               + (", ".join(report["top_limited_on"]) or "no worker"))


def _warn_key_type(bp: Any, limit: str, key_type: str) -> None:
    """A key of another type than the workers' keys matches nothing ("C1" is not b"C1"):
    say so, from the types of the keys the workers refused lately."""
    ops = ops_records(bp)
    (row,) = [r for r in keyed_status(bp, ops, time.time()) if r["name"] == limit]
    if row["key_types"] and key_type not in row["key_types"]:
        click.echo(f"warning: the workers' most refused keys of {limit} are "
                   f"{', '.join(row['key_types'])}, not {key_type}: this override matches no "
                   f"such key (--key-type {row['key_types'][0]}?)", err=True)


def _list(bp: Any, limit: str) -> None:
    found = keyed_overrides(ops_records(bp), limit, bp.settings.secret_key)
    click.echo(table([[c.shown_key, c.rate, c.burst, c.by, c.reason or None,
                        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.at))] for c in found],
                      ["key", "rate/s", "burst", "by", "reason", "at (UTC)"]))
    click.echo(f"{len(found)} key override(s) on {limit}")


@backpressure.command(name="key-override")
@click.argument("limit")
@click.argument("key", required=False)
@click.option("--rate", type=click.FloatRange(min=0, min_open=True, max=MAX_RATE),
              default=None, help="The key's own rate (events per second).")
@click.option("--burst", type=click.FloatRange(min=0, min_open=True, max=MAX_RATE),
              default=None, help="Its burst capacity (default: one second of RATE).")
@click.option("--clear", is_flag=True, default=False, help="Remove the key's override.")
@click.option("--list", "list_", is_flag=True, default=False,
              help="List the keys of LIMIT with an operator override.")
@_KEY_TYPE
@click.option("--reason", default="", help="Why (kept in the audit trail).")
@timeout_option("Seconds to wait for every worker's acknowledgement.")
@click.pass_context
def key_override(ctx: click.Context, limit: str, key: str | None, rate: float | None,
                 burst: float | None, clear: bool, list_: bool, key_type: str, reason: str,
                 timeout: float) -> None:
    """Set one key's limits of a keyed limit on every worker (signed, acknowledged by each,
    kept across restarts), clear them, or list the keys that have one."""
    bp = installation(ctx)
    declared("keyed limit", limit, bp.keyed_limits)
    if list_:
        _list(bp, limit)
        return
    if key is None:
        raise click.UsageError("give KEY (or --list)")
    if clear == (rate is not None):
        raise click.UsageError("give --rate (and --burst), or --clear")
    if clear and burst is not None:
        raise click.UsageError("--burst goes with --rate")
    try:
        command = KeyOverrideCommand.new(limit, parse_key(key, key_type), rate, burst,
                                         operator(), reason)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not clear:
        _warn_key_type(bp, limit, key_type)
    acked, workers = acknowledged(bp, send_key_override, command, timeout=timeout)
    done = "cleared" if clear else f"{command.rate:g}/s, burst {command.burst:g}"
    click.echo(f"{limit} key {command.shown_key!r}: {done} on {acked} of {workers} worker(s)")
    if not acked:
        fail("no worker acknowledged")

