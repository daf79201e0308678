from __future__ import annotations

import pytest

from faust_backpressure.limiters import LeakyBucketRateLimiter, SlidingWindowRateLimiter

from .conftest import FakeClock


def test_leaky_capacity_one_paces_strictly(clock: FakeClock) -> None:
    lb = LeakyBucketRateLimiter(10, 1, clock=clock)
    assert lb.try_acquire()
    assert not lb.try_acquire()
    assert lb.time_until_available() == pytest.approx(0.1)
    clock.advance(0.05)
    assert not lb.try_acquire()
    clock.advance(0.05)
    assert lb.try_acquire()


def test_leaky_queue_level_and_capacity(clock: FakeClock) -> None:
    lb = LeakyBucketRateLimiter(10, 3, clock=clock)
    assert lb.try_acquire(2)
    assert lb.current_level == pytest.approx(2)
    assert not lb.try_acquire(2)
    assert lb.try_acquire(1)
    clock.advance(0.2)
    assert lb.current_level == pytest.approx(1)
    assert lb.stats().tokens == pytest.approx(2)
    with pytest.raises(ValueError, match="permits"):
        lb.try_acquire(4)


def test_leaky_update_rate_keeps_level_and_reset_empties(clock: FakeClock) -> None:
    lb = LeakyBucketRateLimiter(10, 4, clock=clock)
    lb.try_acquire(4)
    lb.update_rate_limit(2)
    assert lb.current_level == pytest.approx(4)
    clock.advance(1.0)
    assert lb.current_level == pytest.approx(2)
    lb.reset()
    assert lb.current_level == 0
    assert lb.current_rate_limit == 2


@pytest.mark.parametrize(
    ("args", "name"), [((0, 1), "leak_rate_per_second"), ((1, 0), "capacity")]
)
def test_leaky_validation(args: tuple[float, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LeakyBucketRateLimiter(*args)


def test_window_limits_and_expires_sub_windows(clock: FakeClock) -> None:
    sw = SlidingWindowRateLimiter(10, 1.0, sub_windows=10, clock=clock)
    assert sw.current_rate_limit == 10
    assert sw.try_acquire(6)
    clock.advance(0.5)
    assert sw.try_acquire(4)
    assert not sw.try_acquire()
    # the 6 expire when their sub-window leaves the window: at t=1.0
    assert sw.time_until_available(1) == pytest.approx(0.5)
    assert sw.time_until_available(7) == pytest.approx(1.0)
    clock.advance(0.5)
    assert sw.available == 6
    assert sw.try_acquire(6)


def test_window_long_idle_clears_everything(clock: FakeClock) -> None:
    sw = SlidingWindowRateLimiter(5, 2.0, sub_windows=4, clock=clock)
    assert sw.try_acquire(5)
    clock.advance(100)
    assert sw.available == 5


def test_window_update_rate_and_reset(clock: FakeClock) -> None:
    sw = SlidingWindowRateLimiter(10, 2.0, clock=clock)
    sw.try_acquire(8)
    sw.update_rate_limit(4)  # 8 per 2 s window
    assert sw.max_permits == 8
    assert not sw.try_acquire()
    with pytest.raises(ValueError, match="new_rate"):
        sw.update_rate_limit(0.1)
    sw.reset()
    assert sw.available == 8
    assert sw.window_seconds == 2.0


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        ((0, 1), {}, "max_permits"),
        ((5, 0), {}, "window_seconds"),
        ((5, 1), {"sub_windows": 0}, "sub_windows"),
    ],
)
def test_window_validation(
    args: tuple[float, float], kwargs: dict[str, int], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        SlidingWindowRateLimiter(*args, **kwargs)


def test_sliding_window_agrees_with_itself_on_a_float_boundary() -> None:
    # Found by hypothesis: a window of 0.42379545075677927 s in 10 sub-windows, advanced by
    # exactly one window; division put "now" in the old sub-window, multiplication in the new.
    from faust_backpressure.limiters import SlidingWindowRateLimiter

    from .conftest import FakeClock

    clock = FakeClock()
    window = SlidingWindowRateLimiter(1, 0.42379545075677927, clock=clock)
    assert window.try_acquire()
    clock.advance(0.42379545075677927)
    assert window.time_until_available(1) == 0.0
    assert window.try_acquire()
