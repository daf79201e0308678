"""The one place that touches faust-streaming's (and mode's, aiokafka's) private internals.

Everything else in the package uses Faust's public API and calls the functions here when it
needs more, importing them from this package (which re-exports every name below). Each patch
names the upstream behaviour it works around; :func:`install` (``installing``) puts them on an
app before it starts and checks that the installed faust-streaming is a version they were
tested with (:data:`TESTED_FAUST`).

The patches:

* **Offsets are never committed past a record that was not processed** (``consumer``). Faust
  treats a jump in a partition's offsets as a gap to commit past (transaction markers and
  compaction make such jumps), and a partition that resumes from the wrong position during a
  rebalance makes the same jump (faust-streaming #216). Here a jump is re-read: the partition is
  sought back to the first missing offset, and only if the fresh fetch again starts past it is
  the range a real gap (:class:`OffsetGuard`). Faust's commit rule also lets the commit pass one
  unacked offset after the committed one (``min(acked) - committed > 1``; #312 fixed it with
  ``> 0``, later releases went back, #606 is open); :meth:`_GuardedConsumer._new_offset` stops
  at the first unacked one.
* **A rebalance does not re-activate a partition early** (``consumer``). Faust clears stream
  buffers at a rebalance but leaves their pending pressure-drop callbacks; the next read of the
  (empty) buffer re-activated the partition while Faust was restoring tables with the flow
  resumed and before it sought the partition to its committed offset. A rate-limited stream
  fills its buffer, so a distributed limiter (whose table needs that restore) made this happen
  at most rebalances.
* **Table recovery asks the broker where a changelog ends** (``consumer``; robinhood/faust#658):
  Faust's exactly_once recovery took the last stable offset of aiokafka's last fetch, -1 before
  one, and a worker restarting on its own state dir crash-looped
  (:meth:`_GuardedConsumer.highwaters`).
* **A standby keeps the changelog records fetched while the recovery completes**
  (``standby_records``): Faust's recovery resumed the flow at the end of
  ``on_recovery_completed``, which clears the changelog queue, without seeking the standby
  partitions again; their records fetched meanwhile were gone for good
  (:func:`keep_standby_records`).
* **A table write is sent before its event's offset is committed** (``buffered_writes``):
  Faust sends changelog records from its producer buffer in a task its commit did not wait
  for; a crash then lost the write, and under exactly_once it joined a transaction that could
  stay open until the broker aborted it (:func:`send_buffered`, from the consumer's commit).
* **A producer keeps every topic it sends to in its metadata** (``producers``): aiokafka
  dropped a topic first seen in an all-topics refresh once it tracked another, and a record
  sent to it then waited for ever, so did Faust's flush before each commit
  (:class:`TopicKeepingProducer`).
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
