"""Per-key token buckets on a virtual clock."""

from __future__ import annotations

import heapq
import random
from collections.abc import Hashable

import pytest

from faust_backpressure.limiters.keyed_buckets import KeyedTokenBuckets, KeyLimits, KeyState

from .conftest import FakeClock


def _worst_excess(times: list[float], rate: float) -> float:
    """max over spans [t_i, t_j] of admitted - rate * span (the bound says <= burst)."""
    return max(j - i + 1 - rate * (times[j] - times[i])
               for i in range(len(times)) for j in range(i, len(times)))


def test_absent_key_has_a_full_bucket_and_nothing_is_stored(clock: FakeClock) -> None:
    store: dict[Hashable, KeyState] = {}
    buckets = KeyedTokenBuckets(10, 5, store=store, clock=clock)
    assert buckets.tokens("a") == 5 and store == {}
    assert [buckets.try_acquire("a") for _ in range(6)] == [True] * 5 + [False]
    assert set(store) == {"a"}
    assert buckets.try_acquire("b")  # another key is not held back by "a"


def test_entry_is_removed_once_refilled(clock: FakeClock) -> None:
    store: dict[Hashable, KeyState] = {}
    buckets = KeyedTokenBuckets(10, 5, store=store, clock=clock)
    for key in range(1000):
        assert buckets.try_acquire(key, 2)
    assert len(store) == 1000 and buckets.queued == 1000
    clock.advance(0.1)
    assert buckets.expire(limit=10_000) == 0  # 2 tokens take 0.2 s to come back
    clock.advance(0.1)
    assert buckets.expire(limit=10_000) == 1000
    assert store == {} and buckets.queued == 0


def test_expire_looks_again_at_a_key_spent_since(clock: FakeClock) -> None:
    store: dict[Hashable, KeyState] = {}
    buckets = KeyedTokenBuckets(10, 5, store=store, clock=clock)
    buckets.try_acquire("a")
    clock.advance(0.09)
    assert buckets.try_acquire("a", 4)  # full_at moves on
    clock.advance(0.02)
    assert buckets.expire() == 0 and "a" in store
    clock.advance(1.0)
    assert buckets.expire() == 1 and store == {}


def test_idle_key_gets_its_full_burst_again(clock: FakeClock) -> None:
    buckets = KeyedTokenBuckets(2, 4, clock=clock)
    assert sum(buckets.try_acquire("k") for _ in range(10)) == 4
    clock.advance(2.0)  # 4 tokens at 2/s
    assert sum(buckets.try_acquire("k") for _ in range(10)) == 4
    clock.advance(100.0)  # never more than the burst
    assert sum(buckets.try_acquire("k") for _ in range(10)) == 4


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_key_within_rate_t_plus_burst(clock: FakeClock, seed: int) -> None:
    # One stream: direct admissions, deferrals, and deferred events handed back by a releaser
    # that is sometimes away (a rebalance, a slow start) and then returns them all at once.
    rng = random.Random(seed)
    rate, burst = 5.0, 3.0
    buckets = KeyedTokenBuckets(rate, burst, clock=clock)
    admitted: dict[int, list[float]] = {k: [] for k in range(50)}
    held: list[tuple[float, int, int]] = []  # (not_before, seq, key)
    away_until = 0.0
    for seq in range(6_000):
        clock.advance(rng.expovariate(600))
        if rng.random() < 0.0005:
            away_until = clock() + rng.uniform(0.5, 3.0)
        while held and held[0][0] <= clock() and clock() >= away_until:
            not_before, _, key = heapq.heappop(held)
            due = buckets.readmit(key, not_before)
            clock.advance(max(0.0, due - clock()))  # the stream waits for it
            admitted[key].append(clock())
        key = min(int(rng.paretovariate(1.2)) - 1, 49)  # a few hot keys, many quiet ones
        if buckets.try_acquire(key):
            admitted[key].append(clock())
        else:
            heapq.heappush(held, (buckets.defer(key), seq, key))
        buckets.expire()
    for times in admitted.values():
        if len(times) > 1:
            assert times == sorted(times)
            assert _worst_excess(times, rate) <= burst + 1e-6
    assert len(admitted[0]) > 50  # the hot key was limited, not starved


def test_deferred_events_keep_their_key_in_order(clock: FakeClock) -> None:
    buckets = KeyedTokenBuckets(10, 2, clock=clock)
    assert buckets.try_acquire("hot") and buckets.try_acquire("hot")
    first = buckets.defer("hot")
    assert first == pytest.approx(clock() + 0.1)
    clock.advance(0.5)  # tokens are back, but "hot" has a deferred event: later ones wait
    assert not buckets.try_acquire("hot")
    second = buckets.defer("hot")
    assert second >= first and buckets.deferred("hot") == 2
    assert buckets.try_acquire("quiet")  # others are not held back
    assert buckets.readmit("hot", first) == clock()
    # the first came back 0.4 s late: the second keeps its spacing after it
    assert buckets.readmit("hot", second) == pytest.approx(second + clock() - first)
    assert buckets.deferred("hot") == 0
    clock.advance(1.0)
    assert buckets.try_acquire("hot")


def test_a_late_readmission_shifts_the_keys_later_ones(clock: FakeClock) -> None:
    buckets = KeyedTokenBuckets(10, 1, clock=clock)
    slots = [buckets.defer("k") for _ in range(4)]  # 1000.0, .1, .2, .3
    clock.advance(2.0)  # the deferral agent was away: all four come back at once
    times = [buckets.readmit("k", slot) for slot in slots]
    assert times == pytest.approx([1002.0, 1002.1, 1002.2, 1002.3])  # spacing kept
    clock.advance(0.3)  # the stream waited for the last one: its bucket is empty then
    assert buckets.tokens("k") == pytest.approx(0.0, abs=1e-9)


def test_reservations_space_deferred_events_at_the_rate(clock: FakeClock) -> None:
    buckets = KeyedTokenBuckets(4, 1, clock=clock)
    times = [buckets.defer("k") for _ in range(9)]
    assert times[0] == clock()  # the burst token
    assert times[1:] == pytest.approx([clock() + i / 4 for i in range(1, 9)])


def test_overrides_by_function_and_costs_capped_at_the_burst(clock: FakeClock) -> None:
    gold = KeyLimits(100, 50)
    buckets = KeyedTokenBuckets(1, 2, clock=clock,
                                limits_for=lambda k: gold if str(k).startswith("g") else None)
    assert sum(buckets.try_acquire("g1") for _ in range(100)) == 50
    assert sum(buckets.try_acquire("s1") for _ in range(100)) == 2
    assert buckets.try_acquire("s2", 10)  # dearer than the bucket: costs the whole bucket
    assert not buckets.try_acquire("s2")


def test_limited_now_counts_refused_keys_until_their_token(clock: FakeClock) -> None:
    buckets = KeyedTokenBuckets(1, 1, clock=clock)
    for key in "abc":
        buckets.try_acquire(key)
        buckets.try_acquire(key)
    assert buckets.limited_now() == 3
    clock.advance(1.0)
    assert buckets.limited_now() == 0


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        KeyLimits(0, 1)
    with pytest.raises(ValueError):
        KeyedTokenBuckets(1, -1)
    with pytest.raises(ValueError, match="keep_full"):
        KeyedTokenBuckets(1, 1, keep_full=-1.0)


def test_due_reads_the_keys_shift_without_changing_it(clock: FakeClock) -> None:
    store: dict[Hashable, KeyState] = {}
    buckets = KeyedTokenBuckets(10, 1, store=store, clock=clock)
    slots = [buckets.defer("k") for _ in range(3)]  # 1000.0, .1, .2
    assert buckets.due("k", slots[0]) == slots[0] and buckets.due("other", 5.0) == 5.0
    clock.advance(1.0)  # the first comes back a second late: the others are shifted by 1 s
    assert buckets.readmit("k", slots[0]) == clock()
    before = dict(store)
    assert buckets.due("k", slots[1]) > clock()
    assert buckets.due("k", slots[1]) == pytest.approx(slots[1] + 1.0)  # asked twice: same
    assert store == before and buckets.deferred("k") == 2  # nothing changed
    clock.advance(0.1)
    assert buckets.readmit("k", slots[1]) == pytest.approx(clock())


def test_a_full_entry_is_kept_for_keep_full_and_means_a_full_bucket(clock: FakeClock) -> None:
    store: dict[Hashable, KeyState] = {}
    kept = KeyedTokenBuckets(10, 5, store=store, clock=clock, keep_full=60.0)
    plain = KeyedTokenBuckets(10, 5, clock=clock)  # removes entries once full
    for _ in range(20):  # the same admissions whether a full entry stays or not
        assert [kept.try_acquire("a") for _ in range(7)] == \
            [plain.try_acquire("a") for _ in range(7)]
        clock.advance(0.7)
        kept.expire()
        plain.expire()
    clock.advance(1.0)
    assert kept.expire() == 0 and "a" in store and kept.tokens("a") == 5
    clock.advance(59.0)
    assert kept.expire() == 1 and store == {} and kept.queued == 0
