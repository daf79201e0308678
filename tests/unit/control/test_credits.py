"""Credit-based flow control: a window of outstanding records, credits back by announcement."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faust_backpressure.control.credits import CreditBasedFlowController
from faust_backpressure.limiters import RateLimitingStrategy, RateLimitTimeout


def test_the_window_is_spent_then_announcements_return_credits() -> None:
    credits = CreditBasedFlowController(window=10)
    assert isinstance(credits, RateLimitingStrategy)
    assert credits.try_acquire(6) and credits.try_acquire(4) and not credits.try_acquire(1)
    assert credits.time_until_available(1) == float("inf")  # only an announcement helps
    credits.announce(backlog=7)  # the downstream processed 3 of the 10
    assert credits.credits == 3 and credits.try_acquire(3) and not credits.try_acquire(1)
    credits.announce(backlog=25)  # more outstanding than the window: nothing, not negative
    assert credits.credits == 0 and credits.current_utilization == 1.0
    stats = credits.stats()
    assert (stats.granted, stats.denied, stats.tokens) == (13, 2, 0.0)


async def test_waiters_are_woken_by_announcements_in_order_without_polling() -> None:
    credits = CreditBasedFlowController(window=4)
    assert credits.try_acquire(4)
    order: list[str] = []

    async def take(name: str, permits: int) -> None:
        await credits.acquire(permits)
        order.append(name)

    first = asyncio.ensure_future(take("first", 3))
    second = asyncio.ensure_future(take("second", 1))
    await asyncio.sleep(0.01)
    assert order == [] and not credits.try_acquire(1)  # a queued waiter goes first
    credits.announce(backlog=2)  # 2 credits: not enough for the head (3): nobody jumps it
    await asyncio.sleep(0.01)
    assert order == []
    credits.announce(backlog=0)  # 4 credits: head takes 3, the next 1
    await asyncio.gather(first, second)
    assert order == ["first", "second"] and credits.credits == 0


async def test_timeout_and_cancellation_take_nothing() -> None:
    credits = CreditBasedFlowController(window=2)
    assert credits.try_acquire(2)
    with pytest.raises(RateLimitTimeout):
        await credits.acquire(1, timeout=0.01)
    waiter = asyncio.ensure_future(credits.acquire(2))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    credits.announce(backlog=0)
    assert credits.credits == 2  # the cancelled waiter left nothing behind


def test_window_updates_reset_and_bad_input() -> None:
    credits = CreditBasedFlowController(window=10)
    assert credits.try_acquire(8)
    credits.update_rate_limit(20)  # ten more slots: ten more credits
    assert (credits.window, credits.credits) == (20, 12)
    credits.reset()
    assert credits.credits == 20 and credits.stats().granted == 0
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="window"):
            CreditBasedFlowController(window=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backlog"):
        credits.announce(-1)
    with pytest.raises(ValueError, match="permits"):
        credits.try_acquire(21)


def test_a_stage_window_is_split_among_its_workers_and_scaled() -> None:
    from faust_backpressure.control.credits import shared_credits

    assert shared_credits(100, 0) == (100, 100)  # one worker: the old per-worker window
    assert shared_credits(100, 40) == (100, 60)
    assert shared_credits(100, 40, members=3) == (33, 20)  # (100 - 40) // 3 each
    assert shared_credits(100, 150, members=3) == (33, 0)  # over the window: none, not < 0
    assert shared_credits(100, 0, members=0) == (100, 100)  # between generations: as one
    assert shared_credits(100, 0, members=200) == (1, 0)  # more workers than the window
    assert shared_credits(100, 10, members=2, scale=0.5) == (25, 20)  # the loop halved it
    assert shared_credits(100, 0, scale=0.0) == (1, 1)  # never closed for good
    assert shared_credits(100, 0, scale=3.0) == (100, 100)  # never above the window
    for members in range(1, 8):  # together never more than the stage's window
        for backlog in range(0, 120, 7):
            share, credits = shared_credits(100, backlog, members)
            assert members * credits + backlog <= max(100, backlog)
            assert credits <= share


def test_announcements_share_the_window_and_a_new_window_keeps_the_split() -> None:
    credits = CreditBasedFlowController(window=90, initial_credits=0)
    credits.announce(30, members=3)
    assert (credits.window, credits.credits, credits.max_permits) == (30, 20, 30.0)
    assert credits.try_acquire(20) and not credits.try_acquire(1)
    credits.update_rate_limit(180)  # the stage's window doubles: each share doubles
    assert (credits.stage_window, credits.window, credits.credits) == (180, 60, 30)
    credits.announce(30, members=1, scale=0.5)  # one worker left, the loop halved it
    assert (credits.window, credits.credits) == (90, 60)
    credits.reset()
    assert (credits.window, credits.credits) == (180, 180)


def test_records_in_flight_and_a_workers_own_records_limit_its_credits() -> None:
    from faust_backpressure.control.credits import shared_credits

    # in flight: sent, maybe not in the measured backlog yet
    assert shared_credits(100, 40, members=2, in_flight=10) == (50, 20)
    assert shared_credits(100, 40, members=2, in_flight=99) == (50, 0)
    # its own records not yet processed bound it, whatever the backlog said
    assert shared_credits(100, 0, members=2, sent=45) == (50, 5)
    assert shared_credits(100, 0, members=2, sent=80) == (50, 0)
    # a window per worker: the stage's is window x members, each counts its share of it
    assert shared_credits(60, 0, members=2, per_worker=True) == (60, 60)
    assert shared_credits(60, 100, members=2, per_worker=True) == (60, 10)
    assert shared_credits(60, 100, members=2, per_worker=True, sent=55) == (60, 5)
    with pytest.raises(ValueError, match="sent"):
        shared_credits(60, 0, sent=-1)


@given(st.integers(1, 5), st.lists(st.tuples(st.integers(0, 4), st.integers(0, 50),
                                             st.booleans()), max_size=60))
def test_a_stage_never_has_more_than_its_window_outstanding_however_stale(
        members: int, steps: list[tuple[int, int, bool]]) -> None:
    """Workers announce from backlogs measured at any moment (stale ones included) and spend
    their credits; the downstream processes records now and then. With each worker's own
    records known, the stage's outstanding records never exceed its window."""
    from faust_backpressure.control.credits import shared_credits

    window = 60
    own = [0] * members  # each worker's records not yet processed
    history = [0]  # backlogs a worker may have measured (any of them: stale)
    for who, pick, downstream_works in steps:
        worker = who % members
        backlog = history[pick % len(history)]
        _, credits = shared_credits(window, backlog, members, sent=own[worker])
        own[worker] += credits  # spends it all
        if downstream_works:  # the downstream processes one record of each worker
            own = [max(0, n - 1) for n in own]
        history.append(sum(own))
        assert sum(own) <= window


def test_sink_sends_count_a_workers_records_until_the_downstream_commits_past_them() -> None:
    from types import SimpleNamespace

    from faust_backpressure.control.credit_flow import SinkSends

    sends = SinkSends(["priced"])
    states = [sends.on_send_initiated(None, topic, None, 0, 0)
              for topic in ("priced", "priced", "priced", "other")]
    assert states[3] is None  # another topic: not counted
    assert sends.outstanding({}) == 3  # all in flight
    for state, offset in zip(states[:2], (7, 8), strict=True):
        sends.on_send_completed(None, state, SimpleNamespace(topic="priced", partition=0,
                                                             offset=offset))
    sends.on_send_error(None, RuntimeError("gone"), states[2])  # never in the log
    sends.on_send_completed(None, states[3], None)  # another topic's ack: ignored
    assert sends.outstanding({}) == 2
    assert sends.outstanding({("priced", 0): 8}) == 1  # offset 7 processed
    assert sends.outstanding({("priced", 0): 9}) == 0


def test_sink_sends_count_a_batch_pipelines_sends_and_acks() -> None:
    from types import SimpleNamespace

    from faust_backpressure.control.credit_flow import SinkSends

    sends = SinkSends(["priced"])
    sends.on_batch_sent({"priced": 3, "other": 5})
    assert sends.outstanding({}) == 3
    sends.on_batch_acked([SimpleNamespace(topic=t, partition=0, offset=o)
                          for t, o in (("priced", 4), ("priced", 5), ("dlq", 0))])
    assert sends.outstanding({}) == 3  # two acked (still unprocessed downstream), one in flight
    assert sends.outstanding({("priced", 0): 6}) == 1
