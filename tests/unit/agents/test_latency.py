"""Latency windows (pure): percentiles over the last observations, a histogram since start."""

from __future__ import annotations

import tracemalloc

import pytest

from faust_backpressure.agents.latency import (
    LATENCY_BUCKETS,
    LatencySummary,
    LatencyWindow,
    percentile,
)


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_an_empty_window_has_no_percentiles_and_an_empty_histogram() -> None:
    summary = LatencyWindow().summary()
    assert summary == LatencySummary(count=0, p50=None, p95=None, p99=None,
                                     buckets=[0] * (len(LATENCY_BUCKETS) + 1), sum=0.0)


def test_percentiles_are_nearest_rank_observed_values() -> None:
    ordered = [float(i) for i in range(1, 101)]  # 1..100
    assert percentile(ordered, 0.50) == 50.0
    assert percentile(ordered, 0.95) == 95.0
    assert percentile(ordered, 0.99) == 99.0
    assert percentile(ordered, 1.0) == 100.0
    assert percentile([7.0], 0.5) == percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def test_latencies_measured_with_a_virtual_clock_give_their_percentiles() -> None:
    clock = VirtualClock()
    window = LatencyWindow(size=1024)
    for i in range(1, 101):  # batches taking 10 ms .. 1 s
        opened = clock()
        clock.advance(i / 100)
        window.observe(clock() - opened)
    summary = window.summary()
    assert summary.count == len(window) == window.total == 100
    assert summary.p50 == pytest.approx(0.50)
    assert summary.p95 == pytest.approx(0.95)
    assert summary.p99 == pytest.approx(0.99)
    assert 0 < summary.p50 <= summary.p95 <= summary.p99
    assert summary.sum == pytest.approx(sum(i / 100 for i in range(1, 101)))


def test_the_window_keeps_only_the_last_observations_and_the_histogram_all() -> None:
    window = LatencyWindow(size=10)
    for _ in range(90):
        window.observe(5.0)  # an old slow spell
    for _ in range(10):
        window.observe(0.001)
    summary = window.summary()
    # the percentiles forget the slow spell; the histogram (for Prometheus) keeps it
    assert summary.count == 10 and summary.p99 == pytest.approx(0.001)
    assert window.total == sum(summary.buckets) == 100
    assert summary.buckets[0] == 10  # <= 5 ms
    assert summary.buckets[LATENCY_BUCKETS.index(5.0)] == 90  # a bound's value is in its bucket


def test_beyond_the_last_bound_is_counted_in_the_inf_bucket_and_negatives_as_zero() -> None:
    window = LatencyWindow(size=4, bounds=(0.1, 1.0))
    window.observe(30.0)
    window.observe(-0.5)  # a clock stepping back
    summary = window.summary()
    assert summary.buckets == [1, 0, 1]
    assert summary.p50 == 0.0 and summary.p99 == 30.0 and summary.sum == 30.0


def test_bad_sizes_and_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="size"):
        LatencyWindow(size=0)
    with pytest.raises(ValueError, match="bounds"):
        LatencyWindow(bounds=(1.0, 0.5))


def test_memory_stays_bounded_however_many_observations() -> None:
    window = LatencyWindow(size=1024)
    for i in range(2048):  # full, then its steady state
        window.observe(i * 1e-4)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(100_000):
            window.observe((i % 5000) * 1e-4)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(window) == 1024 and window.total == 102_048
    assert after - before < 4096  # no growth per observation (100,000 of them)
