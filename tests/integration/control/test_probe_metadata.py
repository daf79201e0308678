"""A lag probe's Kafka clients keep the metadata of the probed topics, not the cluster's.

Without a subscription an aiokafka client asks for every topic at each metadata refresh
(every 5 minutes) and keeps them all: in the soak (bench/soak.py) the workers' memory grew
with the topics other tests made on the shared broker."""

from __future__ import annotations

from collections.abc import Callable

from faust_backpressure.control.probe import LagProbe
from faust_backpressure.testing.kafka_io import create_topics, produce


async def test_a_refresh_brings_only_the_probed_topics(kafka_bootstrap: str,
                                                        unique_name: Callable[[str], str]) -> None:
    probed, other, later = unique_name("probed"), unique_name("other"), unique_name("later")
    await create_topics(kafka_bootstrap, {probed: 2, other: 1})
    probe = LagProbe(kafka_bootstrap, unique_name("group"), [probed])
    try:
        await probe.measure()
        await create_topics(kafka_bootstrap, {later: 1})  # the cluster grows
        for client in (probe._consumer._client, probe._admin._client):  # type: ignore[union-attr]
            await client.force_metadata_update()  # as the periodic refresh does
            assert client.cluster.topics() == {probed}
        await produce(kafka_bootstrap, probed, [(b"k", b"v")] * 5)
        assert await probe.measure() == (5, 0)  # still measures (no commits: all of it)
    finally:
        await probe.close()
