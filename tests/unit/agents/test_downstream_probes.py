"""While the breaker is not closed only its probes go out (issue 22), on virtual time.

In a 5-round outage bench up to 4 calls of a worker went out at once with a half-open
probe: calls admitted while the breaker was closed had waited seconds for a rate permit
(the learnt quota, starved), got them together, and found the breaker half-open, which
did not hold them. Here the same: 64 events, a rate cut to nearly nothing as the outage
opens the breaker, raised again 30 s into it.
"""

from __future__ import annotations

import asyncio

from faust_backpressure.agents.downstream import Downstream
from faust_backpressure.agents.slow_down import DependencyUnavailable
from faust_backpressure.limiters import CircuitBreaker, FixedLimit, TokenBucketRateLimiter
from tests.unit.limiters.test_circuit_breaker import VirtualTimeLoop

# the breaker tests' loop: idle time jumps straight to the next timer
_VirtualTimeLoop = VirtualTimeLoop


OUTAGE = 60.0


async def _outage(loop: asyncio.AbstractEventLoop) -> tuple[list[float], float, float]:
    """Calls sent (times), when the breaker first opened, when the last event was done."""
    now = loop.time
    rate = TokenBucketRateLimiter(20, 20, clock=now)
    breaker = CircuitBreaker(window=2.0, minimum_calls=10, wait_in_open=1.25, open_jitter=0.2,
                             half_open_calls=2, sequential_probes=True, probe_rate=1.0,
                             clock=now, rng=lambda: 0.0)  # the guard's, at its shortest wait
    api = Downstream("api", limit=FixedLimit(64), breaker=breaker, rate=rate, clock=now,
                     wall_clock=now)
    sent: list[float] = []
    opened: list[float] = []
    breaker.on_transition(lambda old, new: opened.append(now()) if new.value == "open" else None)

    async def call() -> None:
        sent.append(now())
        await asyncio.sleep(0.005)
        if now() < OUTAGE:
            raise DependencyUnavailable("HTTP 503")

    async def quota() -> None:
        await asyncio.sleep(0.1)
        rate.update_rate_limit(0.01)  # the quota learnt from the outage: nearly nothing
        await asyncio.sleep(30.0)
        rate.update_rate_limit(1000.0)  # learnt afresh: the waiters' permits, all at once

    changes = asyncio.ensure_future(quota())
    await asyncio.gather(*(api.run(call) for _ in range(64)))
    await changes
    return sent, opened[0], now()


def test_an_outage_lets_out_only_the_breakers_probes_at_most_one_a_second() -> None:
    loop = _VirtualTimeLoop()
    try:
        sent, opened, done = loop.run_until_complete(_outage(loop))
    finally:
        loop.close()
    during = [t for t in sent if opened < t < OUTAGE]
    assert len(during) <= OUTAGE - opened  # <= 1/s
    assert max(sum(1 for u in during if t <= u < t + 1.0) for t in during) <= 2
    assert done - OUTAGE <= 2.0  # back within a round once the system answers

