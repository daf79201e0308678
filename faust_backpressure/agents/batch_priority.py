"""Priority shedding in a batch pipeline (docs/batching.md, "Priority shedding in a batch").

Under a control loop's shed level, a batch's records whose priority is below it leave the
batch before the limiter (:func:`split_low`: they cost no tokens) and are sent to the gate's
shed topic as outputs of the batch (:func:`send_low`: acked before the batch's offsets under
at_least_once, in its transaction under exactly_once), with the per-event gate's headers.

Example::

    batch.records, batch.low = split_low(gate, batch.records)   # before the limiter
    ...
    futures += await send_low(gate, producer, batch.low)        # with the batch's sends
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from faust_backpressure.agents.keyed_batch import BatchEvent
from faust_backpressure.agents.rate_limit import PRIORITY_SHED_CAUSE, RateLimitGate
from faust_backpressure.agents.sensor import notify_sensors

__all__ = ["Low", "send_low", "split_low"]

#: A record shed for its priority, with (its priority, the shed level).
Low = tuple[Any, tuple[int, int]]


def split_low(gate: RateLimitGate, records: Sequence[Any]) -> tuple[list[Any], list[Low]]:
    """``records`` kept (in order) and those below the gate's shed level now, with their
    priority and the level: the gate's per-event rule (a record whose priority cannot be
    computed, e.g. undecodable, is kept). All kept without a level or a priority function."""
    if gate.shed_threshold is None or gate.priority is None:
        return list(records), []
    kept: list[Any] = []
    low: list[Low] = []
    for record in records:
        event: Any = BatchEvent.of(record)  # what the priority function reads: .message
        why = gate.low_priority(event)
        if why is None:
            kept.append(record)
        else:
            low.append((record, why))
    return kept, low


async def send_low(gate: RateLimitGate, producer: Any, low: Sequence[Low]) -> list[Any]:
    """Each shed record to the gate's shed topic (raw key and value, the default
    partitioner, the per-event gate's shed headers), counted as the gate counts a shed event
    (``shed``, ``shed_by_priority``, sensors' ``on_rate_limit_shed``); their send futures."""
    futures: list[Any] = []
    for record, why in low:
        topic = gate.shed_topic_for(record.topic).get_topic_name()
        headers = gate.shed_headers_of(record, 0, PRIORITY_SHED_CAUSE, why)
        futures.append(await producer.send(topic, record.value, key=record.key,
                                           headers=headers))
        gate.shed += 1
        gate.shed_by_priority += 1
        notify_sensors(gate.app, "on_rate_limit_shed", gate.agent_name, gate.name, topic, 0)
    return futures
