"""The one place that touches faust-streaming's (and mode's, aiokafka's) private internals.

Everything else in the package uses Faust's public API and calls the functions here when it
needs more, importing them from this package (which re-exports every name below). Each patch
names the upstream behaviour it works around; :func:`install` (``installing``) puts them on an
app before it starts and checks that the installed faust-streaming is a version they were
tested with (:data:`TESTED_FAUST`). The evidence for each is in docs/reliability.md ("Faust bugs
worked around", "Where it stands").

The patches:

* **Offsets are never committed past a record that was not processed** (``consumer``): a jump
  in a partition's offsets is re-read before it counts as a gap (:class:`OffsetGuard`;
  faust-streaming #216), and a commit stops at the first unacked offset (#312, #606).
* **A rebalance does not re-activate a partition early** (``consumer``): a stale pressure-drop
  callback is ignored while Faust restores tables and seeks.
* **Table recovery asks the broker where a changelog ends** (``consumer``; robinhood/faust#658:
  :meth:`_GuardedConsumer.highwaters`).
* **A fetch never reads "no partition active" as "every partition"** (``fetch_view``).
* **A standby keeps the changelog records fetched while the recovery completes**
  (``standby_records``: :func:`keep_standby_records`).
* **A table write is sent before its event's offset is committed** (``buffered_writes``:
  :func:`send_buffered`, from the consumer's commit).
* **A producer keeps every topic it sends to in its metadata** (``producers``:
  :class:`TopicKeepingProducer`).
* **exactly_once** (``transactions``, ``control_topics``): outputs join their input's
  transaction; commits happen between events (:class:`InputTransactionManager`); internal
  (control) records and the writes of our own tables are sent outside every transaction
  (:func:`send_control`, :func:`mark_control_topic`).

The other modules: ``context`` (:class:`AppContext`, the app's one context object, kept on
the app and reached through :func:`context_of`), ``batches`` (batch sources, docs/batching.md:
the :class:`BatchTap` each source topic's records are diverted to, and Faust's bookkeeping,
producers and commits for a batch), ``table_writes`` (a keyed limit's table writes, batched to
its changelog: :class:`ChangelogWriter`), ``streams`` (small accessors used by the other
layers, and a rate-limit gate's marks and batch wrappers on its streams), ``recovery_watch``
(what the consumer knows of a changelog partition a table recovery gets no record of) and
``crash`` (:func:`crash_worker`). Imports between them go one way: installing -> consumer,
standby_records; consumer -> batches, buffered_writes -> table_writes, transactions ->
control_topics, crash; all of them -> context.
"""

from __future__ import annotations

from faust_backpressure.faust_seam.batches import (
    BatchTap,
    ack_offsets,
    batch_writer,
    commit_through,
    hold_partition,
    is_stale_generation,
    processed_in_generation,
    raw_producer,
    register_batch_tap,
    release_partition,
    transaction_producer,
)
from faust_backpressure.faust_seam.context import AppContext, Slot, context_of, find_context
from faust_backpressure.faust_seam.control_topics import (
    is_control_topic,
    mark_control_topic,
    send_control,
)
from faust_backpressure.faust_seam.crash import CRASH_GRACE, crash_worker
from faust_backpressure.faust_seam.installing import (
    TESTED_FAUST,
    FaustVersionWarning,
    UnsupportedTransport,
    check_faust_version,
    install,
)
from faust_backpressure.faust_seam.offset_guard import OffsetGuard
from faust_backpressure.faust_seam.producers import TopicKeepingProducer
from faust_backpressure.faust_seam.standby_records import keep_standby_records
from faust_backpressure.faust_seam.streams import (
    TakeEvents,
    flow_stopped_event,
    force_metadata_update,
    keep_metadata_of,
    let_go,
    redeliver,
    refresh_consumer_metadata,
    set_stream_gate,
    source_backlog,
    stream_gate,
    stream_processors,
    unbounded_stream_buffer,
    wrap_stream_batches,
)
from faust_backpressure.faust_seam.table_writes import (
    ChangelogWriter,
    changelog_writer,
    in_partition,
    persist_changelog_offset,
)
from faust_backpressure.faust_seam.transactions import (
    InputTransactionManager,
    TransactionLost,
    transactional_id_of,
)

__all__ = ["CRASH_GRACE", "TESTED_FAUST", "AppContext", "BatchTap", "ChangelogWriter",
           "FaustVersionWarning", "InputTransactionManager", "OffsetGuard", "Slot", "TakeEvents",
           "TopicKeepingProducer", "TransactionLost", "UnsupportedTransport", "ack_offsets",
           "batch_writer", "changelog_writer", "check_faust_version", "commit_through",
           "context_of", "crash_worker", "find_context", "flow_stopped_event",
           "force_metadata_update", "hold_partition", "in_partition", "install",
           "is_control_topic", "is_stale_generation", "keep_metadata_of",
           "keep_standby_records", "let_go", "mark_control_topic",
           "persist_changelog_offset", "processed_in_generation", "raw_producer", "redeliver",
           "refresh_consumer_metadata", "register_batch_tap", "release_partition", "send_control",
           "set_stream_gate", "source_backlog", "stream_gate", "stream_processors",
           "transaction_producer", "transactional_id_of", "unbounded_stream_buffer",
           "wrap_stream_batches"]
