from __future__ import annotations

import pytest


class FakeClock:
    """A virtual monotonic clock: time moves only with ``advance``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        assert dt >= 0
        self.now += dt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
