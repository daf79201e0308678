"""The one token bucket: a level that refills at ``rate`` up to ``capacity``.

Pure (no clock of its own, no I/O): every call passes ``now``. Used by the in-memory token
bucket and its tiers, the distributed limiter's lease level and its safe-capacity fallback;
the owner's ledger uses :func:`refill` (its cap moves as leases come and go).
"""

from __future__ import annotations

__all__ = ["BURST_SECONDS", "EPSILON", "ONE_PERMIT", "Bucket", "refill", "small_burst"]

#: Float rounding slack, in permits: a request is granted when it is short by less than
#: this (e.g. refill computed as 0.9999999999999 at the exact due time). It never
#: accumulates: after a grant the balance is at least ``-EPSILON``.
EPSILON = 1e-9
#: The level at which one permit is there (``1 - EPSILON``; hot paths compare with it).
ONE_PERMIT = 1.0 - EPSILON
#: A small local bucket (a rate lease's, the fallback's) holds this many seconds of its rate.
BURST_SECONDS = 0.05


def refill(level: float, rate: float, elapsed: float, cap: float) -> float:
    """``level`` after ``elapsed`` seconds at ``rate``, cut to ``cap``."""
    level += rate * elapsed
    return cap if level > cap else level


def small_burst(rate: float, at_least: float = 1.0) -> float:
    """The capacity of a small local bucket at ``rate``: ``BURST_SECONDS`` of it, at least
    ``at_least`` permits."""
    return max(at_least, BURST_SECONDS * rate)


class Bucket:
    """``level`` tokens at time ``at``, refilling at ``rate`` up to ``capacity``.

    A level above the capacity (a lease can be granted more than its local burst) is spent
    down but never cut: refill only raises a level that is below the capacity. Time must not
    go back (``now >= at``).
    """

    __slots__ = ("at", "capacity", "level", "rate")

    def __init__(self, rate: float, capacity: float, level: float, at: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = level
        self.at = at

    def __repr__(self) -> str:
        return (f"Bucket(rate={self.rate!r}, capacity={self.capacity!r}, level={self.level!r}, "
                f"at={self.at!r})")

    def level_at(self, now: float) -> float:
        """What the level would be at ``now`` (changes nothing)."""
        level = self.level
        if level < self.capacity:
            return refill(level, self.rate, now - self.at, self.capacity)
        return level

    def refill(self, now: float) -> float:
        """Bring the level up to ``now`` and return it."""
        level = self.level
        if level < self.capacity:
            self.level = level = refill(level, self.rate, now - self.at, self.capacity)
        self.at = now
        return level

    def take(self, permits: float, now: float) -> bool:
        """Take ``permits`` at ``now`` if the bucket holds them (within ``EPSILON``)."""
        level = self.refill(now)
        if level >= permits - EPSILON:
            self.level = level - permits
            return True
        return False

    def delay(self, permits: float, now: float) -> float:
        """Seconds until ``permits`` are there (<= 0: now); refills up to ``now``."""
        return (permits - EPSILON - self.refill(now)) / self.rate

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate from ``now`` on; what accrued until then is kept."""
        self.refill(now)
        self.rate = rate

    def fill(self, level: float, now: float) -> None:
        """Set the level at ``now`` (a reset, or a new lease)."""
        self.level = level
        self.at = now
