"""ACLs enforced (KRaft StandardAuthorizer): the documented app ACLs suffice for a pipeline under
a distributed limiter, the operator's suffice for dlq-replay, and a principal without Write on
the internal topics cannot touch a limiter."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import faust
import pytest
from aiokafka.errors import TopicAuthorizationFailedError

from faust_backpressure.agents import replay_dlq
from faust_backpressure.app import Backpressure
from faust_backpressure.app.acls import acls_for_app, app_acls, operator_acls
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import consume, create_topics, produce, read_to_end
from faust_backpressure.testing.secure import SecureKafkaBroker
from faust_backpressure.testing.settings import fast_faust_settings
from faust_backpressure.wire.kafka_clients import client_settings, kafka_producer
from faust_backpressure.wire.limiter_records import (
    LeaseRequest,
    LimiterConfig,
    decode_replies,
    encode,
)

pytestmark = pytest.mark.kafka

USERS = {"app": "app-secret", "operator": "op-secret"}


@pytest.fixture(scope="module")
def acl_broker() -> Iterator[SecureKafkaBroker]:
    with SecureKafkaBroker(users=USERS, authorizer=True) as broker:
        yield broker


def _app(broker: SecureKafkaBroker, user: str, name: str, datadir: Path,
         guarantee: str = "at_least_once") -> faust.App:
    return faust.App(name, datadir=str(datadir), broker_credentials=broker.credentials(user),
                     processing_guarantee=guarantee,
                     **fast_faust_settings(broker=f"kafka://{broker.secure_bootstrap}"))


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_app_and_operator_acls_work_and_nobody_else_steers_a_limiter(
        acl_broker: SecureKafkaBroker, unique_name: Callable[[str], str],
        tmp_path: Path, guarantee: str) -> None:
    plain = acl_broker.bootstrap_servers  # ANONYMOUS, the super user: setup and reading
    source, sink, dlq = unique_name("src"), unique_name("sink"), unique_name("dlq")
    await create_topics(plain, {source: 2, sink: 2, dlq: 1})
    app_id = unique_name("app")
    app = _app(acl_broker, "app", app_id, tmp_path / "app", guarantee)
    bp = Backpressure(app, settings=BackpressureSettings())
    rate = 100.0

    def check(value: bytes) -> bytes:
        if value.startswith(b"bad"):
            raise ValueError("refused")
        return value

    bp.pipeline("acl", source=source, sink=sink, dlq=dlq, process=check, max_retries=0,
                limiter="acl-api", tokens_per_second=rate, burst_capacity=rate)
    limiter = bp.registered_limiters[0]
    acls = acls_for_app(app, "app")
    assert acls == app_acls(app_id, "User:app", sources=[source], sinks=[sink], dlqs=[dlq],
                            exactly_once=guarantee == "exactly_once")
    began = time.monotonic()
    acl_broker.add_acls([*acls, *operator_acls(app_id, "operator", sources=[source],
                                               dlqs=[dlq])])
    print(f"\nACLs created in {time.monotonic() - began:.1f} s")

    good = [b"ok-%d" % i for i in range(200)]
    bad = [b"bad-%d" % i for i in range(3)]
    await produce(plain, source, ((None, v) for v in good + bad))
    async with running_app(app):
        out = await consume(plain, sink, until=len(good), timeout=60,
                            isolation_level="read_committed")
        dead = await consume(plain, dlq, until=len(bad), timeout=30,
                             isolation_level="read_committed")
        grants_before = await read_to_end(plain, f"{app_id}-fbp-limiter-grants")

        # The operator can read the internal topics but not write them: a forged lease
        # request for 10^12 tokens and a rate of 10^6 is refused by the broker.
        intruder = kafka_producer(client_settings(
            _app(acl_broker, "operator", unique_name("op"), tmp_path / "op"), "intruder"))
        forged = LeaseRequest(request_id="forged-1", limiter_id="acl-api", worker_id="thief",
                              demand=1e12, requested=10**12, sent_at=time.time(), lease_id=None,
                              unspent=0, config=LimiterConfig(rate=1e6, burst=1e6,
                                                              lease_ttl=1.0))
        await intruder.start()
        try:
            with pytest.raises(TopicAuthorizationFailedError):
                await intruder.send_and_wait(f"{app_id}-fbp-limiter-requests",
                                             encode(forged, key=b"acl-api"), key=b"acl-api")
        finally:
            await intruder.stop()
        assert limiter.current_rate_limit == rate

        # The operator's ACLs do let it replay the DLQ into the source.
        operator = _app(acl_broker, "operator", unique_name("op2"), tmp_path / "op2")
        report = await replay_dlq(client_settings(operator, "dlq-replay"), pipeline="acl",
                                  dlq_topic=dlq, target_topic=source,
                                  group_id=f"{app_id}-bp-dlq-replay-acl", from_beginning=True)
        assert report.replayed == len(bad)
        dead = await consume(plain, dlq, until=2 * len(bad), timeout=30,  # failed again
                             isolation_level="read_committed")
        grants_after = await read_to_end(plain, f"{app_id}-fbp-limiter-grants")
    assert sorted(r.value for r in out) == sorted(good)
    assert sorted(r.value for r in dead) == sorted(bad * 2)
    assert grants_before, "the app got grants under its ACLs"
    replies = [reply for r in grants_after for reply in decode_replies(r.value)]
    assert not any(getattr(reply, "worker_id", None) == "thief" for reply in replies)
    assert limiter.current_rate_limit == rate
