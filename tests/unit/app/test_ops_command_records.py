"""The breaker and key-override commands are pinned byte for byte, as the pause command is in
``tests/unit/test_wire_format.py``: they share one codec (``OperatorCommand``), and a worker of
one version must accept what an operator's command of another signed. The bytes were made by
the code before that codec."""

from __future__ import annotations

from typing import Any

import pytest

from faust_backpressure.app.downstream_ops import BreakerCommand
from faust_backpressure.app.keyed_ops import KeyOverrideCommand
from faust_backpressure.wire.signing import BAD_SIGNATURE, WRONG_KEY, RejectedRecord

SECRET = b"s3cret"
AT = 1_700_000_000.0

BREAKER = BreakerCommand("payments-api", "open", "id1", "alice@ops", AT, "incident")
BREAKER_RAW = (b'{"at":1700000000.0,"by":"alice@ops","dependency":"payments-api","id":"id1",'
               b'"reason":"incident","sig":"a6e71c0937389d91a64ebc9677c40a4ab1e7e843ab7ae75ad001'
               b'52c50bf6eb21","state":"open","type":"breaker"}')
OVERRIDE = KeyOverrideCommand("per-tenant", b"stenant-7", 5.0, 10.0, "id1", "alice@ops", AT,
                              "noisy")
OVERRIDE_RAW = (b'{"at":1700000000.0,"burst":10.0,"by":"alice@ops","id":"id1","rate":5.0,'
                b'"reason":"noisy","sig":"576c32f88110fbe12016d7ad533b326948bc695f870bfeaa82c72'
                b'8bab7f13b29","target":"per-tenant/7374656e616e742d37","type":"key-override"}')
REMOVAL = KeyOverrideCommand("per-tenant", b"stenant-7", None, None, "id1", "alice@ops", AT)
REMOVAL_RAW = (b'{"at":1700000000.0,"burst":null,"by":"alice@ops","id":"id1","rate":null,'
               b'"reason":"","sig":"0c729211eab696c27052537a4cbe3d1bb3bb530ecef9223530c32b69b0'
               b'db10ca","target":"per-tenant/7374656e616e742d37","type":"key-override"}')
KEYED = b"keyed/per-tenant/7374656e616e742d37"


@pytest.mark.parametrize(("record", "raw", "key"), [
    (BREAKER, BREAKER_RAW, b"breaker/payments-api"),
    (OVERRIDE, OVERRIDE_RAW, KEYED),
    (REMOVAL, REMOVAL_RAW, KEYED),
], ids=["breaker", "key-override", "key-override-removal"])
def test_operator_commands_keep_their_signed_bytes(record: Any, raw: bytes, key: bytes) -> None:
    decode = type(record).decode
    assert record.encode(SECRET) == raw
    assert decode(raw, key, SECRET) == record
    with pytest.raises(RejectedRecord) as caught:
        decode(raw, key, b"guess")
    assert caught.value.code == BAD_SIGNATURE
    with pytest.raises(RejectedRecord) as caught:
        decode(raw, b"breaker/other", SECRET)
    assert caught.value.code == WRONG_KEY
    with pytest.raises(RejectedRecord, match=f"not a {record.kind} record"):
        decode(raw.replace(b'"type":"', b'"type":"x'), key, None)
