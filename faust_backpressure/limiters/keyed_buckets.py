"""One token bucket per key (customer, tenant, API key), its level kept in a mapping.

Each key's bucket is one number, ``full_at``: the time at which the bucket is full again (the
generic cell rate algorithm, equivalent to a token bucket). At time ``now`` a key has
``burst - max(0, full_at - now) * rate`` tokens; taking ``n`` moves ``full_at`` to
``max(full_at, now) + n / rate``. So

* a key with no entry has a full bucket: a million idle keys cost nothing;
* an entry whose ``full_at`` has passed (and has no deferred events) means a full bucket, as no
  entry does; it is removed once it has been full for ``keep_full`` seconds (:meth:`expire`):
  a key that comes back within that time costs one write, not a write and a removal;
* over any interval of length ``t`` a key is admitted at most ``rate * t + burst`` permits,
  counting deferred events at their not-before time (:meth:`defer` reserves the token then).

The mapping is any ``MutableMapping`` (a dict in tests, a Faust table in a worker); values
are ``(full_at, deferred, late)`` tuples. ``clock`` must be a wall clock (``time.time``) when
the mapping moves between processes. Pure: no Faust, no I/O.

Example::

    buckets = KeyedTokenBuckets(10, 20)           # 10/s per key, bursts of 20
    if buckets.try_acquire("C42"):
        ...
    not_before = buckets.defer("C42")             # reserve the next token, come back then
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Hashable, MutableMapping
from dataclasses import dataclass

from faust_backpressure.config.validation import check_number

from .base import Clock, check_capacity, check_rate
from .bucket import EPSILON

__all__ = ["KeyLimits", "KeyState", "KeyedBucketStats", "KeyedTokenBuckets", "LimitsFor"]

#: ``(full_at, deferred, late)``: when the key's bucket is full again (counting reservations),
#: its events waiting in deferral, and how late its deferred events came back (see readmit).
KeyState = tuple[float, int, float]


@dataclass(frozen=True)
class KeyLimits:
    """A key's refill rate (tokens per second) and burst capacity."""

    tokens_per_second: float
    burst_capacity: float

    def __post_init__(self) -> None:
        check_rate("tokens_per_second", self.tokens_per_second)
        check_capacity("burst_capacity", self.burst_capacity)


#: Per-key limits, or None for the default (e.g. tiers: ``lambda k: GOLD if k in gold else None``).
LimitsFor = Callable[[Hashable], KeyLimits | None]


@dataclass
class KeyedBucketStats:
    """Counts since this object was made (per process)."""

    admitted: int = 0
    deferred: int = 0
    refused: int = 0
    readmitted: int = 0
    expired: int = 0


class KeyedTokenBuckets:
    """Token buckets by key, absent = full, removed once refilled."""

    def __init__(self, tokens_per_second: float, burst_capacity: float, *,
                 store: MutableMapping[Hashable, KeyState] | None = None,
                 limits_for: LimitsFor | None = None, clock: Clock = time.time,
                 keep_full: float = 0.0) -> None:
        self.default = KeyLimits(float(tokens_per_second), float(burst_capacity))
        self.store: MutableMapping[Hashable, KeyState] = {} if store is None else store
        self.limits_for = limits_for
        self.clock = clock
        self.keep_full = check_number("keep_full", keep_full, 0)
        self.stats = KeyedBucketStats()
        # Keys this object stored, by when they may be removed; one heap entry per stored key.
        self._expiry: list[tuple[float, int, Hashable]] = []
        self._queued: set[Hashable] = set()
        self._seq = 0
        # Keys refused lately, until their next token: "keys limited now".
        self._limited: dict[Hashable, float] = {}

    def limits(self, key: Hashable) -> KeyLimits:
        if self.limits_for is not None:
            found = self.limits_for(key)
            if found is not None:
                return found
        return self.default

    def _state(self, key: Hashable) -> KeyState:
        state = self.store.get(key)
        return (0.0, 0, 0.0) if state is None else (float(state[0]), int(state[1]),
                                                     float(state[2]))

    def _save(self, key: Hashable, full_at: float, deferred: int, now: float,
              late: float = 0.0, stored: bool = True) -> None:
        """``stored=False``: the caller just read the key and it had no entry (saves a
        second store read when the level is full)."""
        if full_at <= now and deferred <= 0:
            if stored and key in self.store:
                del self.store[key]
            return
        self.store[key] = (full_at, deferred, late)
        if key not in self._queued:
            self._queued.add(key)
            self._seq += 1
            heapq.heappush(self._expiry, (full_at + self.keep_full, self._seq, key))

    def tokens(self, key: Hashable) -> float:
        """Tokens ``key`` has now (negative while deferred events hold reservations)."""
        limits = self.limits(key)
        full_at = self._state(key)[0]
        return limits.burst_capacity - max(0.0, full_at - self.clock()) * limits.tokens_per_second

    def deferred(self, key: Hashable) -> int:
        """Events of ``key`` deferred and not yet re-admitted."""
        return self._state(key)[1]

    def _cap(self, permits: float, limits: KeyLimits) -> float:
        # An event dearer than the whole bucket could never pass: it costs the whole bucket.
        return permits if permits <= limits.burst_capacity else limits.burst_capacity

    def try_acquire(self, key: Hashable, permits: float = 1) -> bool:
        """Take ``permits`` of ``key``'s tokens now, or refuse (refuses while ``key`` has
        deferred events, so they keep their order)."""
        now = self.clock()
        limits = self.limits(key)
        if permits > limits.burst_capacity:  # as _cap, inline: once per event
            permits = limits.burst_capacity
        state = self.store.get(key)
        if state is None:  # absent = full (the common case: no float/int conversions)
            full_at, deferred = 0.0, 0
        else:
            full_at, deferred = float(state[0]), int(state[1])
        start = full_at if full_at > now else now
        # tokens after taking = burst - (start + permits/rate - now) * rate >= 0
        if deferred <= 0 and (start - now) * limits.tokens_per_second + permits \
                <= limits.burst_capacity + EPSILON:
            self._save(key, start + permits / limits.tokens_per_second, 0, now,
                       stored=state is not None)
            self.stats.admitted += 1
            return True
        self.stats.refused += 1
        self._limited[key] = start + (permits - limits.burst_capacity) / limits.tokens_per_second
        return False

    def reserve(self, key: Hashable, permits: float = 1, *, defer: bool = False) -> float:
        """Take ``permits`` at the earliest time the bucket allows; return that time.

        The tokens are spent at the returned time (the bound counts the event then). With
        ``defer=True`` the key's deferred count goes up: its later events are refused by
        :meth:`try_acquire` until :meth:`readmit` brings it back to 0.
        """
        now = self.clock()
        limits = self.limits(key)
        permits = self._cap(permits, limits)
        full_at, deferred, late = self._state(key)
        start = full_at if full_at > now else now
        full_at = start + permits / limits.tokens_per_second
        not_before = full_at - limits.burst_capacity / limits.tokens_per_second
        not_before = now if not_before < now else not_before
        self._save(key, full_at, deferred + (1 if defer else 0), now, late)
        return not_before

    def when_reserved(self, key: Hashable, permits: float = 1) -> float:
        """When :meth:`reserve` would let ``permits`` of ``key`` pass, changing nothing (a
        batch waits for every key's sum, then takes them)."""
        now = self.clock()
        limits = self.limits(key)
        full_at = self._state(key)[0]
        start = full_at if full_at > now else now
        not_before = start + (self._cap(permits, limits) - limits.burst_capacity) \
            / limits.tokens_per_second
        return now if not_before < now else not_before

    def defer(self, key: Hashable, permits: float = 1) -> float:
        """Reserve ``permits`` for a deferred event of ``key``; return its not-before time."""
        self.stats.deferred += 1
        return self.reserve(key, permits, defer=True)

    def due(self, key: Hashable, not_before: float) -> float:
        """When a deferred event of ``key`` reserved for ``not_before`` may pass: its
        not-before time plus the key's shift (see :meth:`readmit`). Changes nothing, so an
        event not due yet can be held elsewhere (not sleeping in the stream) and come back."""
        state = self.store.get(key)
        return not_before if state is None else not_before + float(state[2])

    def readmit(self, key: Hashable, not_before: float) -> float:
        """A deferred event of ``key`` (reserved for ``not_before``) is back: return when it
        may pass (at most ``now``: at once; later: wait until then).

        Its tokens were spent at ``not_before``. One that comes back late shifts the key's
        later deferred events by as much (``late``), so admissions keep the reservations'
        spacing and the bound holds for real admission times; when the key has no deferred
        events left, the shift moves into ``full_at``.
        """
        now = self.clock()
        full_at, deferred, late = self._state(key)
        due = not_before + late
        if due < now:
            late = now - not_before
            due = now
        deferred -= 1
        if deferred <= 0:
            full_at, deferred, late = full_at + late, 0, 0.0
        self._save(key, full_at, deferred, now, late)
        self.stats.readmitted += 1
        return due

    def expire(self, limit: int = 8) -> int:
        """Remove up to ``limit`` entries this object stored that have been full for
        ``keep_full`` seconds; return how many were removed. Cheap enough to call once per
        event (amortised O(log n))."""
        now = self.clock()
        removed = 0
        heap = self._expiry
        keep = self.keep_full
        while heap and heap[0][0] <= now and limit > 0:
            limit -= 1
            _, _, key = heapq.heappop(heap)
            self._queued.discard(key)
            state = self.store.get(key)
            if state is None:
                continue
            full_at, deferred = float(state[0]), int(state[1])
            if full_at + keep <= now and deferred <= 0:
                del self.store[key]
                removed += 1
            else:  # spent again since, or waiting for deferred events: look again later
                self._queued.add(key)
                self._seq += 1
                heapq.heappush(heap, (max(full_at, now + 1.0) + keep, self._seq, key))
        self.stats.expired += removed
        return removed

    def forget(self) -> None:
        """Drop the expiry queue (the store moved away, e.g. its partition was revoked)."""
        self._expiry.clear()
        self._queued.clear()

    def limited_now(self) -> int:
        """Keys refused whose next token has not come yet (pruned as they come)."""
        now = self.clock()
        for key in [k for k, until in self._limited.items() if until <= now]:
            del self._limited[key]
        return len(self._limited)

    @property
    def queued(self) -> int:
        """Entries this object stored and will remove once full for ``keep_full`` s (its share
        of keys tracked)."""
        return len(self._queued)
