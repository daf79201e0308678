"""The circuit breaker's sliding time window of call outcomes (see :mod:`.circuit_breaker`)."""

from __future__ import annotations

import math

__all__ = ["Window"]


class Window:
    """Outcomes of the last ``n`` buckets of ``width`` seconds: O(n) memory, O(1) per call."""

    __slots__ = ("calls", "epoch", "failures", "n", "per_bucket", "slow", "width")

    def __init__(self, seconds: float, n: int) -> None:
        self.n = n
        self.width = seconds / n
        self.per_bucket = [[0, 0, 0] for _ in range(n)]  # calls, failures, slow
        self.calls = self.failures = self.slow = 0
        self.epoch = -(2**62)  # index of the newest bucket

    def clear(self) -> None:
        for bucket in self.per_bucket:
            bucket[:] = (0, 0, 0)
        self.calls = self.failures = self.slow = 0

    def advance(self, now: float) -> list[int]:
        """The current bucket, after dropping those that left the window."""
        idx = math.floor(now / self.width)
        if idx > self.epoch:
            if idx - self.epoch >= self.n:
                self.clear()
            else:
                for k in range(self.epoch + 1, idx + 1):
                    old = self.per_bucket[k % self.n]
                    self.calls -= old[0]
                    self.failures -= old[1]
                    self.slow -= old[2]
                    old[:] = (0, 0, 0)
            self.epoch = idx
        return self.per_bucket[idx % self.n]

    def add(self, now: float, failed: bool, slow: bool) -> None:
        bucket = self.advance(now)
        bucket[0] += 1
        bucket[1] += failed
        bucket[2] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow
