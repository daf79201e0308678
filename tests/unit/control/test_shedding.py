"""Priority shedding ladder (pure, virtual clock: one sample per 1 s interval)."""

from __future__ import annotations

import pytest

from faust_backpressure.control.shedding import PriorityShedder, ShedLevels

CRITICAL, RELAX = 200, 100


def shedder(**config: object) -> PriorityShedder:
    return PriorityShedder(ShedLevels(**config),  # type: ignore[arg-type]
                           critical_lag=CRITICAL, relax_lag=RELAX, interval=1.0)


def run(s: PriorityShedder, lags: list[int], start: float = 0.0) -> list[int | None]:
    return [s.update(lag, start + i) for i, lag in enumerate(lags)]


def test_no_shedding_below_the_critical_lag() -> None:
    s = shedder()
    assert run(s, [0, 50, 150, 200]) == [None] * 4  # 200 is not above critical


def test_critical_lag_sheds_the_lowest_priority_at_once_and_escalates_while_it_stays() -> None:
    s = shedder(levels=(1, 5, 9), escalate_intervals=3)
    got = run(s, [500] * 10)
    # level 1 at t=0, level 2 at t=3, level 3 at t=6, then the top holds
    assert got == [1, 1, 1, 5, 5, 5, 9, 9, 9, 9]


def test_the_level_holds_between_relax_and_critical_and_escalation_restarts() -> None:
    s = shedder(levels=(1, 2), escalate_intervals=3)
    got = run(s, [500, 500, 150, 150, 150, 150, 500, 500, 500])
    # the hold band keeps level 1; back above critical the 3-interval clock starts again
    assert got == [1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert s.update(500, 9.0) == 2


def test_clearing_lag_relaxes_one_level_per_relax_interval() -> None:
    s = shedder(levels=(1, 2, 3), escalate_intervals=1, relax_intervals=2)
    assert run(s, [500, 500, 500]) == [1, 2, 3]
    got = run(s, [50] * 7, start=3.0)
    assert got == [3, 3, 2, 2, 1, 1, None]


def test_a_relapse_during_relaxing_climbs_again() -> None:
    s = shedder(levels=(1, 2), escalate_intervals=1, relax_intervals=2)
    assert run(s, [500, 500, 50, 50, 50, 50]) == [1, 2, 2, 2, 1, 1]
    assert run(s, [500, 500], start=6.0) == [1, 2]


def test_the_ladder_is_validated() -> None:
    with pytest.raises(ValueError):
        ShedLevels(levels=())
    with pytest.raises(ValueError):
        ShedLevels(levels=(2, 1))
    with pytest.raises(ValueError):
        ShedLevels(levels=(1.5,))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ShedLevels(escalate_intervals=0)
    with pytest.raises(ValueError):
        PriorityShedder(critical_lag=10, relax_lag=20, interval=1.0)
