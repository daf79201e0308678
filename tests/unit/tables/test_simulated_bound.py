"""Owner + workers on a virtual clock with a lossy network: the bound, accuracy, fairness."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.tables._sim import Sim

WINDOWS = (0.05, 0.3, 1.0, 3.0)


def assert_bound(sim: Sim) -> None:
    for window in WINDOWS:
        assert sim.worst_excess(window) <= 1e-6, (window, sim.worst_excess(window))


def test_three_greedy_workers_reach_the_rate_and_respect_the_bound() -> None:
    sim = Sim(rate=200, burst=200, workers=3, lease_ttl=1.0)
    sim.run(20)
    assert_bound(sim)
    total = len(sim.all_admissions())
    assert 0.95 * (200 * 20 + 200) <= total <= 200 * 20 + 200


def test_at_1000_per_second_coordination_costs_under_one_request_per_100_permits() -> None:
    sim = Sim(rate=1000, burst=2000, workers=3, lease_ttl=2.0)
    sim.run(10)
    total = len(sim.all_admissions())
    requests = sum(c.lease_counters.requests for c in sim.clients)
    assert requests * 100 <= total
    assert total >= 0.95 * (1000 * 10 + 2000)


def test_two_equal_workers_get_about_half_each() -> None:
    sim = Sim(rate=200, burst=200, workers=2, lease_ttl=1.0, seed=3)
    sim.run(3)
    warm = [len(a) for a in sim.admitted]
    sim.run(20)
    late = [len(a) - w for a, w in zip(sim.admitted, warm, strict=True)]
    assert abs(late[0] - late[1]) <= 0.15 * sum(late) / 2


def test_unequal_demand_is_split_max_min_fairly() -> None:
    # 30/s + greedy + greedy on 200/s: the small one gets all it asks, the others ~85 each.
    sim = Sim(rate=200, burst=100, workers=3, lease_ttl=1.0, demand=[30, 1e6, 1e6])
    sim.run(3)
    warm = [len(a) for a in sim.admitted]
    sim.run(20)
    rates = [(len(a) - w) / 20 for a, w in zip(sim.admitted, warm, strict=True)]
    assert abs(rates[0] - 30) <= 3
    assert abs(rates[1] - rates[2]) <= 0.15 * 85


def test_lost_and_duplicated_messages_and_a_dead_owner_keep_the_bound() -> None:
    sim = Sim(rate=100, burst=50, workers=3, lease_ttl=0.5, drop=0.2, duplicate=0.2,
              delay=(0.001, 0.08), seed=7)
    sim.run(5)
    sim.crash_owner(2.0)
    sim.kill_worker(0)
    sim.run(8)
    assert_bound(sim)
    assert all(len(ids) == 1 for ids in sim.grants_by_request.values())
    assert len(sim.admitted[1]) > 0


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.sampled_from([20.0, 100.0, 500.0]),
    burst=st.sampled_from([5.0, 50.0, 400.0]),
    workers=st.integers(1, 4),
    ttl=st.sampled_from([0.2, 0.5, 1.5]),
    max_delay=st.sampled_from([0.002, 0.05, 0.3]),
    drop=st.sampled_from([0.0, 0.1, 0.4]),
    duplicate=st.sampled_from([0.0, 0.3]),
    crash_at=st.sampled_from([None, 0.7, 1.9]),
    demand=st.sampled_from([None, (5.0, 1e6, 50.0, 1e6)]),
    seed=st.integers(0, 10_000),
)
def test_bound_holds_under_any_network(rate: float, burst: float, workers: int, ttl: float,
                                       max_delay: float, drop: float, duplicate: float,
                                       crash_at: float | None,
                                       demand: tuple[float, ...] | None, seed: int) -> None:
    """(``test_rate_leases.py`` has the rest of the rate-lease properties.)"""
    sim = Sim(rate=rate, burst=burst, workers=workers, lease_ttl=ttl,
              delay=(0.0005, max_delay), drop=drop, duplicate=duplicate, seed=seed, dt=0.005,
              demand=None if demand is None else list(demand[:workers]))
    if crash_at is None:
        sim.run(3.0)
    else:
        sim.run(crash_at)
        sim.crash_owner(0.5)
        sim.run(3.0 - crash_at)
    assert_bound(sim)
    assert all(len(ids) == 1 for ids in sim.grants_by_request.values())
