"""Trace a never-binding distributed limiter in the throughput bench's batch way (issue 23).

One in-process run of ``bench/throughput.py``'s ``batch_limited`` way, printing each lease
request the worker sends (demand, requested, largest, unspent, lease id), each grant it reads
(tokens, share, cap, ttl, retry_after, answer time, when the renewal is due and the lease ends,
from the grant's arrival) and each batch the limiter refused at once (its level, cap, share,
time left on the lease), and the channel's steps: its service's start (the grant consumer),
each request record sent, read by the owner and answered, each grant record read. Times in
seconds from the start of the process.

    KAFKA_BOOTSTRAP_SERVERS=... PYTHONPATH=. python bench/lease_trace.py --records 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from bench import throughput
from faust_backpressure.tables.keeper import ChannelService
from faust_backpressure.tables.lease import DistributedRateLimiter
from faust_backpressure.tables.service import LimiterChannel
from faust_backpressure.testing.broker import kafka_bootstrap

T0, T0_PERF = time.monotonic(), time.perf_counter()  # the limiter's clock, the meter's
ROWS: list[tuple[Any, ...]] = []


def _at(limiter: DistributedRateLimiter) -> float:
    return round(limiter.clock() - T0, 3)


def _instrument() -> None:
    try_acquire, on_grant, poll = (DistributedRateLimiter.try_acquire,
                                   DistributedRateLimiter.on_grant, DistributedRateLimiter.poll)

    def traced_try(self: DistributedRateLimiter, permits: int = 1) -> bool:
        ok = try_acquire(self, permits)
        if permits > 1 and not ok:
            lease, left = self._lease, self.lease_expires - self.clock()
            ROWS.append(("refused", _at(self), f"level={lease.level:.0f}",
                         f"cap={lease.capacity:.0f}", f"share={lease.rate:.0f}",
                         f"lease_left={left:.3f}"))
        return ok

    def traced_grant(self: DistributedRateLimiter, grant: Any, now: float | None = None) -> bool:
        inflight, arrived = self._inflight, self.clock()
        ok = on_grant(self, grant, now)
        answer = None if inflight is None else round(arrived - inflight.first_sent, 3)
        ROWS.append(("grant", _at(self), f"tokens={grant.tokens}", f"share={grant.share:.0f}",
                     f"cap={grant.share_cap:.0f}", f"ttl={grant.ttl:.3f}",
                     f"retry_after={grant.retry_after:.3f}", f"answer={answer}",
                     f"renew_in={self._next_request_at - arrived:.3f}",
                     f"expires_in={self.lease_expires - arrived:.3f}"))
        return ok

    def traced_poll(self: DistributedRateLimiter, now: float | None = None) -> Any:
        message = poll(self, now)
        if message is not None and getattr(message, "type", None) == "lease":
            ROWS.append(("request", _at(self), f"demand={message.demand:.0f}",
                         f"requested={message.requested}", f"largest={message.largest}",
                         f"unspent={message.unspent:.0f}", f"lease={message.lease_id}"))
        return message

    DistributedRateLimiter.try_acquire = traced_try  # type: ignore[method-assign]
    DistributedRateLimiter.on_grant = traced_grant  # type: ignore[method-assign]
    DistributedRateLimiter.poll = traced_poll  # type: ignore[method-assign]
    _instrument_channel()


def _step(name: str, *more: Any) -> None:
    ROWS.append((name, round(time.monotonic() - T0, 3), *more))


def _instrument_channel() -> None:
    """The channel's steps between a refused batch and its grant (see the module's doc)."""
    on_start, apply_record = ChannelService.on_start, LimiterChannel.apply_record
    send_replies, send_many = LimiterChannel.send_replies, LimiterChannel.send_many
    deliver = LimiterChannel.deliver

    async def traced_start(self: ChannelService) -> None:
        _step("service-start")
        await on_start(self)
        _step("service-started")

    async def traced_apply(self: LimiterChannel, *args: Any) -> bool:
        _step("owner-read")
        return await apply_record(self, *args)

    async def traced_replies(self: LimiterChannel) -> None:
        waiting = len(self._outbox)
        await send_replies(self)
        if waiting:
            _step("owner-answered", f"replies={waiting}")

    async def traced_many(self: LimiterChannel, messages: Any) -> None:
        await send_many(self, messages)
        _step("request-record-sent", f"messages={len(messages)}")

    def traced_deliver(self: LimiterChannel, value: Any, key: Any = None) -> None:
        _step("grant-record-read")
        deliver(self, value, key)

    ChannelService.on_start = traced_start  # type: ignore[method-assign]
    LimiterChannel.apply_record = traced_apply  # type: ignore[method-assign]
    LimiterChannel.send_replies = traced_replies  # type: ignore[method-assign]
    LimiterChannel.send_many = traced_many  # type: ignore[method-assign]
    LimiterChannel.deliver = traced_deliver  # type: ignore[method-assign]


async def _run(bootstrap: str, records: int) -> dict[str, float]:
    source, sink = await throughput.fill(bootstrap, records)
    meter = throughput.Meter(records)
    result = await throughput.way_batch_limited(source, sink, meter)
    result["steady_from"], result["steady_to"] = (round(t - T0_PERF, 3) for _, t, _ in meter.marks)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    _instrument()
    with kafka_bootstrap() as bootstrap:
        os.environ["BENCH_BOOTSTRAP"] = bootstrap
        result = asyncio.run(_run(bootstrap, args.records))
    for row in ROWS:
        print(*row)
    print(result)


if __name__ == "__main__":
    main()
