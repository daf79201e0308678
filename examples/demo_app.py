"""The demo's Faust app: a rate-limited pipeline that prices orders, failures to a DLQ.

Every worker running this app shares ONE token bucket (the distributed limiter
``DEMO_LIMITER``), so the pipeline's total rate holds however many workers run. Orders that are
not JSON, or that have a non-positive quantity, land in the DLQ with the reason in headers.

    faust -A examples.demo_app worker --without-web      # broker: $KAFKA_BOOTSTRAP_SERVERS

Topics, app id and the rate come from the environment so each demo run is independent;
``DEMO_BATCH=500`` runs the pipeline in batch mode (``process_batch=``, docs/batching.md).
"""

import os
from typing import Any

import faust

from faust_backpressure import Backpressure
from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ.get("DEMO_APP_ID", "fbp-demo"), store="rocksdict://",
                **fast_faust_settings())
bp = Backpressure(app)


class Order(faust.Record, serializer="json"):
    id: str
    customer: str
    quantity: int
    unit_price: float


class PricedOrder(faust.Record, serializer="json"):
    id: str
    customer: str
    total: float


orders = app.topic(os.environ.get("DEMO_SOURCE", "demo-orders"), value_type=Order)
priced = app.topic(os.environ.get("DEMO_SINK", "demo-processed"), value_type=PricedOrder)


def price(order: Order) -> PricedOrder:
    if order.quantity <= 0:
        raise ValueError(f"order {order.id}: quantity must be positive, got {order.quantity}")
    return PricedOrder(id=order.id, customer=order.customer,
                       total=round(order.quantity * order.unit_price, 2))


def price_all(batch: list[Order]) -> list[PricedOrder | Exception]:
    """Batch mode (``DEMO_BATCH``): one result per order, an exception for a bad one."""
    out: list[PricedOrder | Exception] = []
    for order in batch:
        try:
            out.append(price(order))
        except ValueError as exc:
            out.append(exc)
    return out


batch_size = int(os.environ.get("DEMO_BATCH", "0"))
mode: dict[str, Any] = ({"process_batch": price_all, "batch_size": batch_size} if batch_size
                        else {"process": price})
bp.pipeline(
    "price-orders", source=orders, sink=priced, **mode,
    dlq=os.environ.get("DEMO_DLQ", "demo-dlq"),
    limiter=os.environ.get("DEMO_LIMITER", "demo-orders"),
    tokens_per_second=float(os.environ.get("DEMO_RATE", "2000")),
    burst_capacity=float(os.environ.get("DEMO_BURST", "2000")),
    max_retries=1, retry_backoff=0.05,
)
