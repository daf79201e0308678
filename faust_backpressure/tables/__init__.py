"""Limiter state in changelog-backed Faust tables: distributed limiters shared by all workers.

See ``docs/distributed.md`` for the protocol and its bound.
"""

from faust_backpressure.tables.store import register_rocksdict_alias

register_rocksdict_alias()

from faust_backpressure.tables.factory import DistributedRateLimiterFactory  # noqa: E402
from faust_backpressure.tables.fairshare import max_min_fair  # noqa: E402
from faust_backpressure.tables.lease import DistributedRateLimiter, LeaseCounters  # noqa: E402
from faust_backpressure.tables.ledger import LedgerStats, LimiterLedger  # noqa: E402
from faust_backpressure.tables.service import LimiterChannel, limiter_channel  # noqa: E402
from faust_backpressure.wire.limiter_records import (  # noqa: E402
    Ack,
    Command,
    Grant,
    LeaseRequest,
    LimiterConfig,
    Rejected,
    RejectedRecord,
)

__all__ = ["Ack", "Command", "DistributedRateLimiter", "DistributedRateLimiterFactory", "Grant",
           "LeaseCounters", "LeaseRequest", "LedgerStats", "LimiterChannel", "LimiterConfig",
           "LimiterLedger", "Rejected", "RejectedRecord", "limiter_channel", "max_min_fair",
           "register_rocksdict_alias"]
