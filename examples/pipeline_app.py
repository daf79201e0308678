"""A three-stage topology: backpressure-input -> intermediate -> output, failures to a DLQ.

    faust -A examples.pipeline_app worker -l info          # broker: $KAFKA_BOOTSTRAP_SERVERS
    faust -A examples.pipeline_app backpressure dlq-replay validate --limit 100

Stage ``validate`` (input -> intermediate) parses and checks orders, rate-limited to 1000/s per
worker; bad JSON, wrong schemas and refused orders land in ``backpressure-dlq``. Stage ``enrich``
(intermediate -> output) adds a total and drops zero-quantity lines (returns None). Both stages
share the DLQ topic; its ``bp.pipeline`` header tells them apart (and replay uses it).
"""

from __future__ import annotations

import os

import faust

from faust_backpressure.app import Backpressure
from faust_backpressure.limiters import TokenBucketRateLimiter

app = faust.App(
    os.environ.get("FBP_EXAMPLE_APP_ID", "backpressure-pipeline-example"),
    broker="kafka://" + os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
    store="rocksdict://",
    topic_partitions=4,
    # "exactly_once" works too: sinks and the DLQ are then written in Kafka transactions.
    processing_guarantee=os.environ.get("FBP_GUARANTEE", "at_least_once"),
)
bp = Backpressure(app)


class Order(faust.Record, serializer="json"):
    id: str
    sku: str
    quantity: int
    unit_price: float


class PricedOrder(faust.Record, serializer="json"):
    id: str
    sku: str
    quantity: int
    total: float


input_topic = app.topic("backpressure-input", value_type=Order)
intermediate_topic = app.topic("backpressure-intermediate", value_type=Order)
output_topic = app.topic("backpressure-output", value_type=PricedOrder)
DLQ = "backpressure-dlq"


def validate(order: Order) -> Order:
    if order.quantity < 0 or order.unit_price < 0:
        raise ValueError(f"order {order.id}: negative quantity or price")
    return order


async def enrich(order: Order) -> PricedOrder | None:
    if order.quantity == 0:
        return None  # nothing to price: filtered, not an error
    return PricedOrder(id=order.id, sku=order.sku, quantity=order.quantity,
                       total=round(order.quantity * order.unit_price, 2))


bp.pipeline("validate", source=input_topic, sink=intermediate_topic, process=validate, dlq=DLQ,
            limiter=TokenBucketRateLimiter(1000, 2000, rate_limiter_id="validate"))
bp.pipeline("enrich", source=intermediate_topic, sink=output_topic, process=enrich, dlq=DLQ,
            max_retries=3, retry_backoff=0.2)
