"""A local broker with a ``SASL_SSL`` listener (TLS + SCRAM-SHA-512 users) for security tests.

Certificates are made at start with :pypi:`trustme` (a throw-away CA and a broker certificate for
``127.0.0.1``); SCRAM users are created when the KRaft storage is formatted. The broker keeps its
plain listener too (the test harness and admin helpers use it).

Example::

    with SecureKafkaBroker(users={"app": "app-secret"}) as broker:
        app = faust.App("x", broker=f"kafka://{broker.secure_bootstrap}",
                        broker_credentials=broker.credentials("app"))
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
from aiokafka.protocol.admin import CreateAclsRequest, CreateAclsRequestStruct
from faust.types.auth import SASLMechanism

from faust_backpressure.app.acls import Acl
from faust_backpressure.testing.broker import BrokerError, LocalKafkaBroker, free_port
from faust_backpressure.wire.kafka_clients import kafka_admin

__all__ = ["AUTHORIZER", "SCRAM_MECHANISM", "SecureKafkaBroker"]

SCRAM_MECHANISM = "SCRAM-SHA-512"
#: KRaft's ACL authorizer (ACLs are stored in the metadata log).
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def _pkcs8(key_pem: bytes) -> bytes:
    """Kafka's PEM key stores read PKCS#8 keys only; trustme writes SEC1 for EC keys."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class SecureKafkaBroker(LocalKafkaBroker):
    """:class:`LocalKafkaBroker` plus a ``SASL_SSL`` listener on :attr:`secure_bootstrap`."""

    def __init__(self, users: dict[str, str], *, authorizer: bool = False,
                 **kwargs: Any) -> None:
        """``authorizer``: ACLs are enforced; the plain listener's principal (``ANONYMOUS``:
        the harness, inter-broker and controller traffic) is the super user, SASL users are
        allowed only what :meth:`add_acls` grants them."""
        if authorizer:
            kwargs["properties"] = {"authorizer.class.name": AUTHORIZER,
                                    "super.users": "User:ANONYMOUS",
                                    **kwargs.get("properties", {})}
        super().__init__(**kwargs)
        self.users = dict(users)
        self.secure_port = free_port()
        self.ca_path = self.data_dir / "ca.pem"
        self._keystore = self.data_dir / "broker-keystore.pem"

    @property
    def secure_bootstrap(self) -> str:
        return f"127.0.0.1:{self.secure_port}"

    def _make_certificates(self) -> None:
        import trustme

        if self._keystore.exists():  # a restart keeps its certificates
            return
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ca.cert_pem.write_to_path(str(self.ca_path))
        chain = b"".join(pem.bytes() for pem in leaf.cert_chain_pems)
        self._keystore.write_bytes(_pkcs8(leaf.private_key_pem.bytes()) + chain)

    def _properties(self) -> str:
        self._make_certificates()
        base = super()._properties()
        secure = f"SASL_SSL://127.0.0.1:{self.secure_port}"
        lines = []
        for line in base.splitlines():
            key, _, value = line.partition("=")
            if key in ("listeners", "advertised.listeners"):
                value = f"{value},{secure}"
            elif key == "listener.security.protocol.map":
                value = f"{value},SASL_SSL:SASL_SSL"
            lines.append(f"{key}={value}")
        prefix = "listener.name.sasl_ssl."
        lines += [
            f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
            f"{prefix}sasl.enabled.mechanisms={SCRAM_MECHANISM}",
            f"{prefix}{SCRAM_MECHANISM.lower()}.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"{prefix}ssl.keystore.type=PEM",
            f"{prefix}ssl.keystore.location={self._keystore}",
        ]
        return "".join(f"{line}\n" for line in lines)

    def _format_arguments(self) -> list[str]:
        return [*super()._format_arguments(), *(
            arg for user, password in self.users.items()
            for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"))]

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this broker's CA."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    def credentials(self, user: str, password: str | None = None) -> faust.SASLCredentials:
        """Faust credentials for ``user`` (``password`` to try a wrong one)."""
        return faust.SASLCredentials(
            username=user, password=self.users[user] if password is None else password,
            mechanism=SASLMechanism.SCRAM_SHA_512, ssl_context=self.ssl_context())

    def add_acls(self, acls: Iterable[Acl]) -> None:
        """Create ACLs in one CreateAcls request over the plain listener (the super user),
        not with ``kafka-acls.sh``: one JVM per ACL is too slow for a test's ACLs."""
        with ThreadPoolExecutor(1) as pool:  # callable from a running event loop
            pool.submit(asyncio.run, create_acls(self.bootstrap_servers, list(acls))).result()


# Kafka's codes (org.apache.kafka.common.acl / resource): what kafka-acls.sh sends for the names.
_RESOURCE = {"topic": 2, "group": 3, "cluster": 4, "transactional-id": 5}
_PATTERN = {"literal": 3, "prefixed": 4}
_OPERATION = {"All": 2, "Read": 3, "Write": 4, "Create": 5, "Delete": 6, "Alter": 7,
              "Describe": 8, "ClusterAction": 9, "DescribeConfigs": 10, "AlterConfigs": 11,
              "IdempotentWrite": 12}
_ALLOW = 3


class _CreateManyAcls(CreateAclsRequest):  # type: ignore[misc]  # aiokafka is untyped here
    """aiokafka's CreateAcls request carries one ACL; the protocol takes a list (v1+)."""

    def __init__(self, creations: list[tuple[int, str, int, str, str, int, int]]) -> None:
        self._creations = creations

    def build(self, request_struct_class: type[CreateAclsRequestStruct]
              ) -> CreateAclsRequestStruct:
        if request_struct_class.API_VERSION < 1:
            raise BrokerError("the broker does not take CreateAcls v1 (resource patterns)")
        return request_struct_class(self._creations)


async def create_acls(bootstrap: str, acls: Sequence[Acl]) -> None:
    """Allow each ACL's operations (host ``*``); raises :class:`BrokerError` naming any the
    broker refused."""
    creations = [(_RESOURCE[acl.resource_type],
                  "kafka-cluster" if acl.resource_type == "cluster" else acl.name,
                  _PATTERN[acl.pattern], acl.principal, "*", _OPERATION[op], _ALLOW)
                 for acl in acls for op in acl.operations]
    async with kafka_admin(bootstrap) as admin:
        response = await admin._send_request(_CreateManyAcls(creations))
    refused = [(creation, code, message) for creation, (code, message)
               in zip(creations, response.creation_responses, strict=True) if code != 0]
    if refused:
        raise BrokerError(f"CreateAcls refused {len(refused)} of {len(creations)}: {refused}")
