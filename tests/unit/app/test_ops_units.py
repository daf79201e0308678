"""Pure parts of the operator commands: pause records, steering ACLs."""

from __future__ import annotations

import pytest

from faust_backpressure.app.acls import operator_acls
from faust_backpressure.app.pause import PauseCommand
from faust_backpressure.wire.signing import RejectedRecord


def test_pause_records_round_trip_signed_and_reject_forgeries() -> None:
    command = PauseCommand("orders", True, "id1", "alice@ops", 1_700_000_000.0, "deploy")
    raw = command.encode(b"s3cret")
    assert PauseCommand.decode(raw, command.key, b"s3cret") == command
    with pytest.raises(RejectedRecord):
        PauseCommand.decode(command.encode(b"guess"), command.key, b"s3cret")
    with pytest.raises(RejectedRecord):  # another pipeline's key
        PauseCommand.decode(raw, b"pause/billing", b"s3cret")


def test_only_a_steering_operator_may_write_the_internal_command_topics() -> None:
    def writable(steer: bool) -> set[str]:
        return {a.name for a in operator_acls("orders", "ops", steer=steer)
                if "Write" in a.operations}
    assert writable(False) == set()
    assert writable(True) == {"orders-fbp-limiter-requests", "orders-fbp-pressure",
                              "orders-fbp-ops"}
