"""docker-compose.yml: no Docker engine runs here, so check its structure and run its worker
command against the local broker instead."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from examples.demo import order
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.workers import FaustWorker

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_kafka_service_is_a_single_kraft_apache_kafka_node(compose: dict) -> None:  # type: ignore[type-arg]
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    # Every advertised listener is one the broker actually listens on.
    listening = {entry.split("://")[0] for entry in env["KAFKA_LISTENERS"].split(",")}
    advertised = {entry.split("://")[0] for entry in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert advertised <= listening
    protocols = env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].replace(":", ",").split(",")
    assert set(protocols) >= listening
    assert "9092:9092" in kafka["ports"]
    assert kafka["healthcheck"]["test"]


def test_worker_service_is_wired_to_the_broker_by_environment(compose: dict) -> None:  # type: ignore[type-arg]
    worker = compose["services"]["worker"]
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    internal = next(entry for entry in
                    compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
                    .split(",") if entry.startswith("INTERNAL://"))
    assert worker["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == internal.split("://")[1]
    assert worker["build"] == "."
    assert worker["deploy"]["replicas"] == 3  # the multi-host shape of docs/deploy.md
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies missing {source}"


@pytest.mark.kafka
async def test_worker_command_runs_against_the_local_broker(
        compose: dict, kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:  # type: ignore[type-arg]
    worker = compose["services"]["worker"]
    command = worker["command"]
    assert command[:2] == ["faust", "-A"] and command[3] == "worker"
    env = {key: str(value) for key, value in worker["environment"].items()}
    env.update(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, DEMO_APP_ID=unique_name("app"),
               DEMO_SOURCE=unique_name("src"), DEMO_SINK=unique_name("sink"),
               DEMO_DLQ=unique_name("dlq"), DEMO_LIMITER=unique_name("limiter"))
    await create_topics(kafka_bootstrap, {env[k]: 4 for k in ("DEMO_SOURCE", "DEMO_SINK",
                                                              "DEMO_DLQ")})
    bad = (99, 149, 199, 299)  # 99, 199, 299 are not JSON; 149 has a negative quantity
    orders = [order(i) for i in range(300)]
    with FaustWorker(command[2], name="compose-worker", env=env, cwd=REPO) as process:
        process.wait_ready()
        await produce(kafka_bootstrap, env["DEMO_SOURCE"], ((b"k", o) for o in orders))
        priced = await consume(kafka_bootstrap, env["DEMO_SINK"], until=300 - len(bad))
        dead = await consume(kafka_bootstrap, env["DEMO_DLQ"], until=len(bad))
    assert sorted(json.loads(r.value)["id"] for r in priced) == sorted(
        f"order-{i:07d}" for i in range(300) if i not in bad)
    assert sorted(r.value for r in dead) == sorted(orders[i] for i in bad)
