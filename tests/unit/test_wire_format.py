"""Signed internal records are pinned byte for byte: a worker of one version must accept what
a worker (or an operator's command) of another signed, so a refactor may not change them."""

from __future__ import annotations

from typing import Any

import pytest

from faust_backpressure.app.pause import PauseCommand
from faust_backpressure.control.override import Override
from faust_backpressure.control.samples import WorkerSample
from faust_backpressure.wire import limiter_records as messages
from faust_backpressure.wire.signing import BAD_SIGNATURE, RejectedRecord

SECRET = b"s3cret"
AT = 1_700_000_000.0

OVERRIDE = Override("orders", "hold", "id1", "alice@ops", AT, 5.0, "drill")
OVERRIDE_RAW = (b'{"action":"hold","at":1700000000.0,"by":"alice@ops","id":"id1",'
                b'"limiter":"orders","rate":5.0,"reason":"drill","sig":"ccaaa9fca20a00bf6b30b1cb'
                b'01e526043704449f3d691e715111b00674a3630e","type":"override"}')
SAMPLE = WorkerSample("orders", "w1", AT, 10, 0.5, 0.25, 1234, 3)
SAMPLE_RAW = (b'{"at":1700000000.0,"cpu":0.25,"lag":10,"limiter":"orders","members":3,'
              b'"processed":1234,"sig":"13c148881a4fd36d8ae8fb9e521e4621a71f4bce74965b3fb7827'
              b'868a33d2677","utilization":0.5,"worker":"w1"}')
PAUSE = PauseCommand("orders", True, "id1", "alice@ops", AT, "deploy")
PAUSE_RAW = (b'{"at":1700000000.0,"by":"alice@ops","id":"id1","paused":true,"pipeline":"orders",'
             b'"reason":"deploy","sig":"f582da39c33725e01f31ac070137d85bdf6791712bef46996e9eaab'
             b'a6979ce74","type":"pause"}')
COMMAND = messages.Command("update_rate", "c1", "orders", "w1", AT, 5.0)
COMMAND_RAW = (b'{"command_id":"c1","limiter_id":"orders","rate":5.0,"sent_at":1700000000.0,'
               b'"sig":"51c6e7e17516243e191d0bd1b4e99f81f770ce0ea73fb99d3759e62946c1e2ce",'
               b'"type":"update_rate","v":1,"worker_id":"w1"}')


@pytest.mark.parametrize(("record", "raw", "key", "decode"), [
    (OVERRIDE, OVERRIDE_RAW, b"orders", Override.decode),
    (SAMPLE, SAMPLE_RAW, b"orders", WorkerSample.decode),
    (PAUSE, PAUSE_RAW, b"pause/orders", PauseCommand.decode),
], ids=["override", "sample", "pause"])
def test_control_records_keep_their_signed_bytes(record: Any, raw: bytes, key: bytes,
                                                 decode: Any) -> None:
    assert record.encode(SECRET) == raw
    assert decode(raw, key, SECRET) == record
    with pytest.raises(RejectedRecord) as caught:
        decode(raw, key, b"guess")
    assert caught.value.code == BAD_SIGNATURE


def test_limiter_commands_keep_their_signed_bytes() -> None:
    assert messages.encode(COMMAND, key=b"orders", secret=SECRET) == COMMAND_RAW
    assert messages.decode_request(b"orders", COMMAND_RAW, SECRET) == COMMAND
