"""A pipeline that charges each order through a payment API with a quota and outages.

``bp.downstream("payments-api")`` guards the calls: a 429 (``Retry-After``) pauses every worker
and teaches them the quota, an outage (503) opens the breaker and the orders wait; none is
dead-lettered for either. Run by ``python -m examples.downstream_demo`` (two workers against a
local quota'd service); env: FBP_APP_ID, FBP_SOURCE, FBP_SINK, FBP_DLQ, FBP_PAYMENTS_URL.
"""

import os

import faust

from faust_backpressure import Backpressure
from faust_backpressure.testing.quota_client import QuotaClient
from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://", **fast_faust_settings())
bp = Backpressure(app)
payments = bp.downstream("payments-api", max_concurrency=32, wait_in_open=1.0)
client: QuotaClient | None = None


async def charge(order: bytes) -> bytes:
    global client
    if client is None:  # made on the worker's event loop
        client = QuotaClient(os.environ["FBP_PAYMENTS_URL"])
    answer = await client.call(order.decode())
    if not answer.ok:  # 429 / 503: the guard pauses, waits and calls again
        raise payments.slow_down_from_http(answer.status, answer.retry_after)
    return b"charged:" + order


bp.pipeline("charge", source=os.environ["FBP_SOURCE"], sink=os.environ["FBP_SINK"],
            dlq=os.environ["FBP_DLQ"], process=charge, downstream=payments,
            ordered_by_key=True)
