"""A secured cluster (TLS + SASL SCRAM-SHA-512): every internal client speaks the app's settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import faust
import pytest

from faust_backpressure.agents import replay_dlq
from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.secure import SecureKafkaBroker
from faust_backpressure.testing.settings import fast_faust_settings
from faust_backpressure.wire.kafka_clients import client_settings

pytestmark = pytest.mark.kafka

USERS = {"app": "app-secret"}


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[SecureKafkaBroker]:
    with SecureKafkaBroker(users=USERS) as broker:
        yield broker


def _app(broker: SecureKafkaBroker, name: str, datadir: Path, guarantee: str = "at_least_once",
         password: str | None = None) -> faust.App:
    return faust.App(name, datadir=str(datadir), processing_guarantee=guarantee,
                     broker_credentials=broker.credentials("app", password),
                     **fast_faust_settings(broker=f"kafka://{broker.secure_bootstrap}"))


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_pipeline_limiter_control_loop_credits_and_replay_over_sasl_ssl(
        secure_broker: SecureKafkaBroker, unique_name: Callable[[str], str], tmp_path: Path,
        guarantee: str) -> None:
    plain = secure_broker.bootstrap_servers  # the harness's own listener, for setup and reading
    source, sink, dlq = unique_name("src"), unique_name("sink"), unique_name("dlq")
    other = unique_name("other")
    await create_topics(plain, {source: 2, sink: 2, dlq: 1, other: 1})
    app = _app(secure_broker, unique_name("app"), tmp_path, guarantee)
    bp = Backpressure(app, settings=BackpressureSettings())
    source_topic = app.topic(source, value_serializer="json")
    bp.pipeline("sec", source=source_topic, sink=sink, dlq=dlq, process=lambda v: v,
                limiter="sec-api", tokens_per_second=500, burst_capacity=500)
    # billing never commits: counted (count_uncommitted), the sample shows the probe's reading
    loop = bp.control_loop("sec-api", downstream_group=unique_name("billing"),
                           downstream_topics=[sink], interval=0.3, count_uncommitted=True)
    bp.credit_flow(1000, downstream_group=unique_name("billing"), downstream_topics=[sink],
                   interval=0.3)
    flow = bp.credit_flows[-1]
    good = [b'{"n":%d}' % i for i in range(150)]  # as Faust's json serializer writes it
    bad = [b"not json %d" % i for i in range(5)]
    await produce(plain, source, ((None, v) for v in good + bad))
    async with running_app(app):
        out = await consume(plain, sink, until=len(good), timeout=60,
                            isolation_level="read_committed")
        dead = await consume(plain, dlq, until=len(bad), timeout=30,
                             isolation_level="read_committed")
        loop_ready = asyncio.get_running_loop().time() + 20
        while (loop.last_sample is None or not flow.announcements) \
                and asyncio.get_running_loop().time() < loop_ready:
            await asyncio.sleep(0.1)
        # the DLQ goes back to another topic over the secured listener too
        report = await replay_dlq(client_settings(app, "dlq-replay"), pipeline="sec",
                                  dlq_topic=dlq, target_topic=other,
                                  group_id=unique_name("replay"), from_beginning=True)
    assert sorted(r.value for r in out) == sorted(good)
    assert sorted(r.value for r in dead) == sorted(bad)
    assert loop.last_sample is not None and loop.last_sample.lag >= len(good)  # lag probe
    assert flow.announcements >= 1  # credit probe
    assert report.replayed == len(bad)
    replayed = await consume(plain, other, until=len(bad), timeout=30)
    assert sorted(r.value for r in replayed) == sorted(bad)


async def test_wrong_credentials_fail_at_start_naming_the_cause(
        secure_broker: SecureKafkaBroker, unique_name: Callable[[str], str], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    app = _app(secure_broker, unique_name("app"), tmp_path, password="wrong")
    Backpressure(app, settings=BackpressureSettings())
    app.in_worker = True
    caplog.set_level(logging.ERROR)
    # A start that retried for ever would end in wait_for's TimeoutError, which does not match.
    with pytest.raises(Exception, match="bootstrap"):
        await asyncio.wait_for(app.start(), timeout=30)
    assert "invalid credentials" in caplog.text  # the cause is named in the log
    await app.stop()
