"""Issue 11 section 2, limiter protocol: forged, replayed, malformed and out-of-range records
are rejected (with a reason) before they reach a ledger or a lease; fuzzed, no decoder raises
anything but a rejection, grants nothing and changes no rate."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import faust
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.tables import (
    DistributedRateLimiter,
    DistributedRateLimiterFactory,
    LimiterConfig,
    LimiterLedger,
    limiter_channel,
)
from faust_backpressure.wire.limiter_records import (
    Ack,
    Command,
    Grant,
    LeaseRequest,
    decode_reply_record,
    decode_requests,
    encode,
    encode_batch,
    encode_replies,
)
from faust_backpressure.wire.signing import (
    BAD_SIGNATURE,
    OUT_OF_RANGE,
    REPLAYED,
    STALE,
    WRONG_KEY,
    Rejected,
    RejectedRecord,
    Rejections,
    ReplayGuard,
)
from tests.unit._strategies import json_values

SECRET = b"s3cret"
CONFIG = LimiterConfig(rate=100.0, burst=1500.0, lease_ttl=1.0)
FUZZ = settings(max_examples=300, deadline=None)


def forged_lease(*, worker: str = "thief", requested: int = 10**12, demand: float = 1e12,
                 sent_at: float = 0.0) -> LeaseRequest:
    return LeaseRequest(request_id=f"{worker}:lim:1", limiter_id="lim", worker_id=worker,
                        demand=demand, requested=requested, sent_at=sent_at, lease_id=None,
                        unspent=0.0, config=CONFIG, seq=1)


def grant(**changes: Any) -> Grant:
    fields = dict(request_id="w:lim:1", limiter_id="lim", worker_id="w", lease_id="1",
                  tokens=10, ttl=2.0, renews=None, retry_after=0.1, epoch=0, rate=100.0,
                  burst=100.0)
    return Grant(**{**fields, **changes})


def only_rejections(decoded: list[Any], code: str | None = None) -> bool:
    return bool(decoded) and all(isinstance(d, Rejected) and (code is None or d.code == code)
                                 for d in decoded)


# -- the attacks of the issue ------------------------------------------------------------------


def test_a_forged_lease_request_without_the_secret_is_rejected_as_bad_signature() -> None:
    raw = encode(forged_lease(), key=b"lim")  # well formed, unsigned
    assert only_rejections(decode_requests(b"lim", raw, SECRET), BAD_SIGNATURE)
    _, batch = encode_batch([forged_lease()], secret=b"guess")  # signed with a wrong key
    assert only_rejections(decode_requests(b"lim", batch, SECRET), BAD_SIGNATURE)


def test_requested_tokens_are_capped_by_the_burst_and_demand_by_the_decoder() -> None:
    ledger = LimiterLedger("lim", CONFIG, now=0.0)
    granted = ledger.handle_lease(forged_lease(), 0.0)
    assert granted is not None and granted.tokens <= CONFIG.burst
    too_much = json.loads(encode(forged_lease(), key=b"lim"))
    too_much["demand"] = 1e13
    [rejected] = decode_requests(b"lim", json.dumps(too_much).encode())
    assert isinstance(rejected, Rejected) and rejected.code == OUT_OF_RANGE


def test_a_forged_update_rate_without_the_secret_is_rejected_and_never_applied() -> None:
    command = Command(type="update_rate", command_id="c1", limiter_id="lim", worker_id="thief",
                      sent_at=0.0, rate=1e6)
    assert only_rejections(decode_requests(b"lim", encode(command, key=b"lim"), SECRET),
                           BAD_SIGNATURE)
    [accepted] = decode_requests(b"lim", encode(command, key=b"lim", secret=SECRET), SECRET)
    assert accepted == command  # the same command, signed, is what a real worker sends


def test_numbers_out_of_range_or_not_finite_are_rejected() -> None:
    body = json.loads(encode(forged_lease(requested=5, demand=5), key=b"lim"))
    for name, value in [("demand", -1), ("requested", 1e999), ("unspent", float("nan")),
                        ("sent_at", 1e300), ("rtt", -0.5), ("seq", 2.0**60)]:
        raw = json.dumps({**body, name: value}).encode()
        [rejected] = decode_requests(b"lim", raw)
        assert isinstance(rejected, Rejected) and rejected.code == OUT_OF_RANGE, name


def test_a_request_without_its_seq_is_rejected() -> None:
    body = json.loads(encode(forged_lease(), key=b"lim"))
    del body["seq"]
    [rejected] = decode_requests(b"lim", json.dumps(body).encode())
    assert isinstance(rejected, Rejected) and "seq" in rejected.reason


def test_an_old_signed_request_or_command_replayed_changes_nothing() -> None:
    ledger = LimiterLedger("lim", CONFIG, now=100.0, max_clock_skew=5.0)
    real = forged_lease(worker="w", requested=100, demand=100, sent_at=100.0)
    first = ledger.handle_lease(real, 100.0)
    assert first is not None and first.tokens > 0
    # Within the window: the recorded grant again, no new tokens; after it: stale.
    assert ledger.handle_lease(real, 101.0) == first
    assert ledger.handle_lease(real, 200.0) is None
    assert ledger.stats.granted == first.tokens and ledger.stats.stale == 1
    cmd = Command(type="update_rate", command_id="c1", limiter_id="lim", worker_id="w",
                  sent_at=200.0, rate=5.0)
    assert ledger.apply_command(cmd, 200.0) is not None and ledger.rate == 5.0
    ledger.apply_command(Command(type="update_rate", command_id="c2", limiter_id="lim",
                                 worker_id="w", sent_at=201.0, rate=50.0), 201.0)
    ledger.apply_command(cmd, 202.0)  # replayed within the window: acknowledged, not applied
    assert ledger.rate == 50.0
    assert ledger.apply_command(cmd, 300.0) is None and ledger.rate == 50.0  # too old


def test_a_future_request_is_not_granted() -> None:
    ledger = LimiterLedger("lim", CONFIG, now=100.0, max_clock_skew=5.0)
    assert ledger.handle_lease(forged_lease(worker="w", sent_at=1e10), 100.0) is None
    assert ledger.stats.stale == 1 and ledger.stats.granted == 0


def test_grants_and_acks_are_signed_and_a_forged_one_is_rejected() -> None:
    replies = [grant(), Ack(command_id="c", limiter_id="lim", worker_id="w", epoch=1, rate=5.0)]
    assert decode_reply_record(encode_replies(replies, SECRET), SECRET) == replies
    assert only_rejections(decode_reply_record(encode_replies(replies), SECRET), BAD_SIGNATURE)
    # Signed for another worker, then readdressed: the worker id is part of what is signed.
    body = json.loads(encode_replies([grant(worker_id="other")], SECRET))
    body["worker_id"] = "w"
    assert only_rejections(decode_reply_record(json.dumps(body).encode(), SECRET),
                           BAD_SIGNATURE)
    huge = json.loads(encode_replies([grant()]))
    huge["tokens"] = 1e999
    assert only_rejections(decode_reply_record(json.dumps(huge).encode()), OUT_OF_RANGE)


def test_the_secret_comes_from_the_settings_and_never_shows_in_a_repr() -> None:
    settings_ = BackpressureSettings.from_env(environ={"FAUST_BP_SECRET": "s3cret",
                                                       "FAUST_BP_MAX_CLOCK_SKEW": "2.5"})
    assert settings_.secret_key == SECRET and settings_.max_clock_skew == 2.5
    assert "s3cret" not in repr(settings_)
    assert BackpressureSettings.from_env(environ={"FAUST_BP_SECRET": ""}).secret is None


def test_replay_guard_remembers_ids_within_its_window_with_bounded_memory() -> None:
    guard = ReplayGuard(window=10.0, capacity=3)
    guard.check("a", 0.0)
    try:
        guard.check("a", 5.0)
        raise AssertionError("replay accepted")
    except RejectedRecord as exc:
        assert exc.code == REPLAYED
    guard.check("a", 11.0)  # forgotten after the window (timestamps reject it by then)
    for i in range(10):
        guard.check(f"id{i}", 12.0)
    assert len(guard) <= 3
    counts = Rejections()
    counts.count(RejectedRecord("old", code=STALE))
    assert counts.by_reason == {STALE: 1} and counts.total == 1


# -- fuzz ---------------------------------------------------------------------------------------

VALID_LEASE = json.loads(encode(forged_lease(worker="w", requested=10, demand=10), key=b"lim"))
VALID_GRANT = json.loads(encode_replies([grant()]))
# a valid body with one field replaced (or added) by anything JSON can carry
mutated_lease = st.builds(lambda k, v: json.dumps({**VALID_LEASE, k: v}).encode(),
                          st.sampled_from([*VALID_LEASE, "sig", "extra"]), json_values)
mutated_grant = st.builds(lambda k, v: json.dumps({**VALID_GRANT, k: v}).encode(),
                          st.sampled_from([*VALID_GRANT, "sig"]), json_values)
records = (st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
           | mutated_lease)
keys = st.none() | st.just(b"lim") | st.binary(max_size=10)


def _check_request(message: LeaseRequest | Command) -> None:
    """An accepted (unsigned) request is in range, and a ledger handles it within bounds."""
    ledger = LimiterLedger("lim", CONFIG, now=0.0)
    if isinstance(message, LeaseRequest):
        reply = ledger.handle_lease(message, 0.0)
        assert reply is None or 0 <= reply.tokens <= CONFIG.burst
        assert ledger.tokens + ledger.outstanding() <= CONFIG.burst + 1e-6
    else:
        ledger.apply_command(message, 0.0)
        assert math.isfinite(ledger.rate) and 1e-9 <= ledger.rate <= 1e12


@FUZZ
@given(key=keys, value=records)
def test_fuzzed_request_records_are_rejected_or_valid_never_raise(key: bytes | None,
                                                                   value: bytes) -> None:
    for message in decode_requests(key, value):  # no secret: well-formed ones pass
        if not isinstance(message, Rejected):
            _check_request(message)
    # With a secret nothing unsigned gets through: no grant, no rate change.
    assert only_rejections(decode_requests(key, value, SECRET))


@FUZZ
@given(value=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
       | mutated_grant)
def test_fuzzed_grant_records_are_rejected_or_ignored_never_raise(value: bytes) -> None:
    now = [0.0]
    limiter = DistributedRateLimiter("lim", 100, 100, worker_id="w", clock=lambda: now[0],
                                     wall_clock=lambda: now[0])
    assert not limiter.try_acquire()
    assert limiter.poll() is not None  # a request in flight, as in a running worker
    for reply in decode_reply_record(value):
        if isinstance(reply, Grant):
            limiter.on_grant(reply)  # at most what a valid grant may carry
        elif isinstance(reply, Ack):
            limiter.on_ack(reply)
    assert math.isfinite(limiter.current_tokens) and limiter.current_tokens >= 0
    assert only_rejections(decode_reply_record(value, SECRET))
    signed = DistributedRateLimiter("lim", 100, 100, worker_id="w", clock=lambda: now[0])
    signed.try_acquire()
    signed.poll()
    for reply in decode_reply_record(value, SECRET):
        assert isinstance(reply, Rejected)
    assert signed.current_tokens == 0 and signed.current_rate_limit == 100


def test_the_channel_takes_the_secret_of_the_settings_unless_given_its_own() -> None:
    app = faust.App("secret-wiring-unit", broker="kafka://127.0.0.1:1")
    DistributedRateLimiterFactory.create_distributed(app, "early", 10, 10)  # before the app's
    Backpressure(app, settings=BackpressureSettings(secret="s3cret", max_clock_skew=3.0))
    channel = limiter_channel(app)
    assert channel.options.secret == SECRET and channel.options.max_clock_skew == 3.0
    own = faust.App("secret-wiring-own", broker="kafka://127.0.0.1:1")
    DistributedRateLimiterFactory.create_distributed(own, "x", 10, 10, secret=b"mine")
    Backpressure(own, settings=BackpressureSettings(max_clock_skew=3.0))  # sets no secret
    options = limiter_channel(own).options
    assert options.secret == b"mine" and options.max_clock_skew == 3.0


async def test_the_channel_counts_and_logs_each_rejection_as_a_value(
        caplog: pytest.LogCaptureFixture) -> None:
    """The decoders' ``Rejected`` values reach the same counters and log lines as before;
    nothing is applied (here on partitions the limiters are not on: no table is read)."""
    app = faust.App("rejected-values-unit", broker="kafka://127.0.0.1:1")
    channel = limiter_channel(app, partitions=4, secret=SECRET)
    elsewhere = (channel._partition("lim") + 1) % 4
    caplog.set_level(logging.WARNING, "faust_backpressure.tables.service")
    signed = encode(forged_lease(), key=b"lim", secret=SECRET)
    assert not await channel.apply_record(b"lim", signed, elsewhere, None)
    assert not await channel.apply_record(b"\xff", b"not json", 0, None)
    assert channel.rejections.by_reason == {WRONG_KEY: 1, "malformed": 1}
    worker = channel.worker_id.encode()
    channel.deliver(encode_replies([grant(worker_id=channel.worker_id)]), worker)  # unsigned
    assert channel.reply_rejections.by_reason == {BAD_SIGNATURE: 1}
    assert [r.getMessage() for r in caplog.records] == [
        f"fbp-limiter: rejected record on partition {elsewhere} (limiter 'lim', wrong_key): "
        "record is on the wrong partition for its key",
        "fbp-limiter: rejected record on partition 0 (limiter None, malformed): "
        "value is not JSON",
        "fbp-limiter: rejected reply (bad_signature): bad or missing signature"]


def test_a_rejection_is_a_plain_value_that_names_its_limiter() -> None:
    [one] = decode_requests(b"lim", b"{}")
    assert one == Rejected("unsupported protocol version None", "lim", code="unknown")
    assert not isinstance(one, BaseException)
    [whole] = decode_requests(b"lim", b"[]")
    assert whole == Rejected("a batch is an array of 1 to 10000 requests", "lim")
    [element] = decode_requests(b"lim", b'[{"limiter_id": "x"}]')
    assert element.limiter_id == "x"
    counts = Rejections()
    counts.count(whole)
    assert counts.by_reason == {"malformed": 1}


async def test_a_command_for_a_limiter_the_owner_does_not_know_is_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    app = faust.App("unknown-command-unit", broker="kafka://127.0.0.1:1", store="memory://")
    channel = limiter_channel(app, partitions=1)
    command = Command(type="reset", command_id="c1", limiter_id="nobody", worker_id="cli",
                      sent_at=0.0)
    caplog.set_level(logging.WARNING, "faust_backpressure.tables.service")
    assert await channel.apply(command, 0, 1.0) is None
    assert [r.getMessage() for r in caplog.records] == [
        "fbp-limiter: command for unknown limiter 'nobody' dropped"]
