"""Issue 11 section 2, pressure topic: a forged, replayed, future or absurd sample is rejected,
counted by reason, and changes no rate; fuzzed, the decider never raises."""

from __future__ import annotations

import json
import time
from typing import Any

import faust
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faust_backpressure.app import Backpressure
from faust_backpressure.app.views import render_prometheus, snapshot
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.control.loop import ControlLoop, ControlLoops
from faust_backpressure.control.samples import WorkerSample
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.wire.signing import (
    BAD_SIGNATURE,
    FUTURE,
    OUT_OF_RANGE,
    REPLAYED,
    STALE,
    UNKNOWN,
    WRONG_KEY,
    RejectedRecord,
)
from tests.unit._strategies import json_values

SECRET = "s3cret"


def _installed(secret: str | None) -> tuple[Backpressure, ControlLoops, ControlLoop]:
    app = faust.App(f"samples-unit-{secret}", broker="kafka://127.0.0.1:1")
    bp = Backpressure(app, settings=BackpressureSettings(secret=secret, max_clock_skew=5.0))
    loop = bp.control_loop(TokenBucketRateLimiter(100, 100), downstream_group="g",
                           downstream_topics=["t"], interval=1.0, name="orders")
    loops = bp._control
    assert loops is not None
    return bp, loops, loop


def sample(**changes: Any) -> WorkerSample:
    return WorkerSample(**{**dict(limiter="orders", worker="w1", at=time.time(), lag=10,
                                  utilization=0.5, cpu=0.1), **changes})


def rejected_as(loops: ControlLoops, raw: bytes, code: str, key: bytes = b"orders") -> None:
    before = loops.rejections.by_reason[code]
    assert loops.handle(raw, key) is None
    assert loops.rejections.by_reason[code] == before + 1, dict(loops.rejections.by_reason)


def test_with_a_secret_an_unsigned_lag_of_a_billion_is_rejected_and_changes_nothing() -> None:
    bp, loops, loop = _installed(SECRET)
    rejected_as(loops, sample(lag=10**9).encode(), BAD_SIGNATURE)
    rejected_as(loops, sample(lag=10**9).encode(b"guess"), BAD_SIGNATURE)
    assert loop.limiter.current_rate_limit == 100 and not loop.decisions
    # Signed with the secret, the same sample is accepted by the checks.
    assert loops.check(sample(lag=10**9).encode(b"s3cret"), b"orders")[1].lag == 10**9
    assert bp.rejections["pressure"] == {BAD_SIGNATURE: 2}


def test_absurd_numbers_are_rejected_not_raised() -> None:
    _, loops, loop = _installed(None)
    body = json.loads(sample().encode())
    for name, value in [("lag", 1e999), ("lag", -1), ("utilization", float("nan")),
                        ("cpu", 1e300), ("at", float("inf")), ("lag", "many")]:
        raw = json.dumps({**body, name: value}).encode()
        rejected_as(loops, raw, OUT_OF_RANGE)
    assert loop.limiter.current_rate_limit == 100 and not loop.decisions


def test_future_old_replayed_wrong_key_and_unknown_samples_are_rejected() -> None:
    _, loops, loop = _installed(None)
    rejected_as(loops, sample(at=time.time() + 3600).encode(), FUTURE)
    rejected_as(loops, sample(at=time.time() - 3600).encode(), STALE)
    fresh = sample().encode()
    loops.check(fresh, b"orders")
    rejected_as(loops, fresh, REPLAYED)
    rejected_as(loops, sample().encode(), WRONG_KEY, key=b"other")
    rejected_as(loops, sample(limiter="nope").encode(), UNKNOWN, key=b"nope")
    assert loop.limiter.current_rate_limit == 100 and not loop.decisions


def test_a_sample_stamped_ahead_does_not_stay_fresh() -> None:
    _, _, loop = _installed(None)
    ahead = sample(worker="liar", lag=10**6, at=time.time() + 4)  # within the skew
    loop.observe(ahead, 0.0)
    decision = loop.observe(sample(worker="w1", lag=0), 10.0)  # 10 intervals later
    assert decision is not None and "liar" not in loop.samples
    assert decision.severity.name == "NORMAL"


def test_rejections_show_in_the_snapshot_and_the_prometheus_text() -> None:
    bp, loops, _ = _installed(SECRET)
    loops.handle(b"\xff", b"orders")
    text = render_prometheus(snapshot(bp))
    assert ('faust_backpressure_rejected_records_total{app="samples-unit-s3cret",'
            'topic="pressure",reason="malformed"} 1.0') in text.splitlines()


VALID = json.loads(sample(at=0.0).encode())
mutated = st.builds(lambda k, v: {**VALID, "at": time.time(), k: v},
                    st.sampled_from([*VALID, "sig"]), json_values)
SIGNED_BP, SIGNED, SIGNED_LOOP = _installed(SECRET)
OPEN_BP, OPEN, OPEN_LOOP = _installed(None)


@settings(max_examples=300, deadline=None)
@given(value=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
       | mutated.map(lambda v: json.dumps(v).encode()),
       key=st.none() | st.just(b"orders") | st.binary(max_size=8))
def test_fuzzed_pressure_records_never_raise_and_never_change_a_signed_loops_rate(
        value: bytes, key: bytes | None) -> None:
    assert SIGNED.handle(value, key) is None
    assert SIGNED_LOOP.limiter.current_rate_limit == 100 and not SIGNED_LOOP.decisions
    try:  # without a secret a well-formed sample may count; a bad one is a rejection
        _, accepted = OPEN.check(value, key)
        assert 0 <= accepted.lag <= 10**15 and 0 <= accepted.utilization <= 100
    except RejectedRecord:
        pass


def test_the_processed_count_is_carried_signed_and_range_checked() -> None:
    sample = WorkerSample(limiter="l", worker="w", at=1.0, lag=5, utilization=0.5, cpu=0.1,
                          processed=1234)
    assert WorkerSample.decode(sample.encode(b"k"), b"l", b"k").processed == 1234
    forged = sample.encode(b"k").replace(b"1234", b"9999")
    with pytest.raises(RejectedRecord):
        WorkerSample.decode(forged, b"l", b"k")
    negative = WorkerSample(limiter="l", worker="w", at=1.0, lag=5, utilization=0.5, cpu=0.1,
                            processed=-1).encode()
    with pytest.raises(RejectedRecord):
        WorkerSample.decode(negative)


def test_the_member_count_is_carried_signed_and_range_checked() -> None:
    sample = WorkerSample(limiter="l", worker="w", at=1.0, lag=5, utilization=0.5, cpu=0.1,
                          processed=10, members=3)
    assert WorkerSample.decode(sample.encode(b"k"), b"l", b"k").members == 3
    forged = sample.encode(b"k").replace(b'"members":3', b'"members":300')
    with pytest.raises(RejectedRecord):
        WorkerSample.decode(forged, b"l", b"k")
    for members in (-1, 10**7):
        absurd = WorkerSample(limiter="l", worker="w", at=1.0, lag=5, utilization=0.5,
                              cpu=0.1, members=members).encode()
        with pytest.raises(RejectedRecord):
            WorkerSample.decode(absurd)


def test_the_error_rate_is_carried_signed_and_range_checked() -> None:
    from faust_backpressure.control.samples import WorkerSample
    from faust_backpressure.wire.signing import RejectedRecord

    sample = WorkerSample("api", "w1", 1_700_000_000.0, 0, 0.5, 0.1, error_rate=0.25)
    raw = sample.encode(b"k")
    assert WorkerSample.decode(raw, b"api", b"k").error_rate == 0.25
    assert WorkerSample.decode(WorkerSample("api", "w1", 1.0, 0, 0.5, 0.1).encode(),
                               b"api").error_rate is None
    for bad in (1.5, -0.1, float("nan")):
        forged = raw.replace(b'"error_rate":0.25', b'"error_rate":' + repr(bad).encode())
        with pytest.raises(RejectedRecord):
            WorkerSample.decode(forged, b"api", None)
