"""A local Kafka cluster of several KRaft nodes (one JVM each) for replication and fail-over tests.

Every node is a combined broker + controller (a :class:`~.broker.LocalKafkaBroker` on its own
free ports), the controllers form one quorum of ``brokers`` voters, and the cluster defaults
are those of a production cluster: ``default.replication.factor`` = ``brokers`` (at most 3),
``min.insync.replicas`` = one less (at least 1), the same for the offsets and transaction
topics. A node that dies is fenced after ``broker.session.timeout.ms`` (6 s here, 9 s by
Kafka's default) and its partitions get new leaders among the in-sync replicas.

Example::

    with LocalKafkaCluster(brokers=3) as cluster:
        print(cluster.bootstrap_servers)              # 127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3
        node = cluster.leader_of("orders", 0)        # node id 1..3
        cluster.kill(node)                           # SIGKILL, data dir kept
        cluster.restart(node)
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient

from faust_backpressure.testing.broker import BrokerError, LocalKafkaBroker, _cluster_id

__all__ = ["LocalKafkaCluster"]


class LocalKafkaCluster:
    """``brokers`` combined KRaft nodes on 127.0.0.1 (ids 1..n), replicated by default."""

    def __init__(self, brokers: int = 3, *, version: str | None = None, heap: str = "256m",
                 session_timeout_ms: int = 6000) -> None:
        if brokers < 1:
            raise ValueError(f"brokers must be >= 1, got {brokers}")
        self.root = Path(tempfile.mkdtemp(prefix="fbp-kafka-cluster-"))
        self.replication = min(brokers, 3)
        self.min_insync = max(1, self.replication - 1)
        shared = {
            "default.replication.factor": str(self.replication),
            "min.insync.replicas": str(self.min_insync),
            "offsets.topic.replication.factor": str(self.replication),
            "transaction.state.log.replication.factor": str(self.replication),
            "transaction.state.log.min.isr": str(self.min_insync),
            "broker.session.timeout.ms": str(session_timeout_ms),
            "broker.heartbeat.interval.ms": "1000",
            # leaders move back once a restarted node has caught up
            "leader.imbalance.check.interval.seconds": "10",
        }
        cluster_id = _cluster_id()
        self.nodes: dict[int, LocalKafkaBroker] = {
            node_id: LocalKafkaBroker(version, data_dir=self.root / f"node{node_id}", heap=heap,
                                      node_id=node_id, cluster_id=cluster_id,
                                      properties=shared)
            for node_id in range(1, brokers + 1)}
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}"
                          for n in self.nodes.values())
        for node in self.nodes.values():
            node.quorum_voters = voters
        self.startup_seconds: float | None = None

    @property
    def bootstrap_servers(self) -> str:
        """Every node's ``host:port``, comma-separated (aiokafka, ``KAFKA_BOOTSTRAP_SERVERS``)."""
        return ",".join(node.bootstrap_servers for node in self.nodes.values())

    def live_bootstrap(self) -> str:
        """``host:port`` of the running nodes only (for clients made after a kill)."""
        return ",".join(n.bootstrap_servers for n in self.nodes.values() if n.running)

    def start(self, timeout: float = 120.0) -> LocalKafkaCluster:
        """Launch every node (a quorum needs a majority running), then wait for all.

        Launched from this thread: a node dies with the thread that started it (its
        parent-death signal follows the thread, not the process), so never from a pool."""
        began = time.monotonic()
        nodes = list(self.nodes.values())
        try:
            for node in nodes:
                node.launch()
            with ThreadPoolExecutor(len(nodes)) as pool:
                list(pool.map(lambda node: node.wait_ready(timeout, began), nodes))
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def node(self, node_id: int) -> LocalKafkaBroker:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise BrokerError(f"no node {node_id} (nodes: {sorted(self.nodes)})") from None

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (no shutdown, no flush), keeping its data for :meth:`restart`."""
        self.node(node_id).halt(kill=True)

    def restart(self, node_id: int, timeout: float = 90.0) -> LocalKafkaBroker:
        return self.node(node_id).restart(timeout)

    def leader_of(self, topic: str, partition: int, timeout: float = 30.0) -> int:
        """The running node leading ``topic``'s ``partition`` (waits until there is one: after
        a kill, the cluster names the dead node until it is fenced)."""
        return asyncio.run(self._leader_of(topic, partition, timeout))

    async def _leader_of(self, topic: str, partition: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.live_bootstrap(),
                                        request_timeout_ms=5000)
            try:
                await admin.start()
                for described in await admin.describe_topics([topic]):
                    for part in described["partitions"]:
                        leader = self.nodes.get(part["leader"])
                        if part["partition"] == partition and leader and leader.running:
                            return int(part["leader"])
            except Exception:  # a node just died: ask again
                pass
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()
            if time.monotonic() > deadline:
                raise BrokerError(f"{topic}[{partition}] has no leader after {timeout:.0f} s")
            await asyncio.sleep(0.3)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop(kill=True, keep_data=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalKafkaCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
