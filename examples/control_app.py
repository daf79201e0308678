"""Two stages under the backpressure control loop: a fast ``price`` stage slows itself down
when the slow ``bill`` stage after it falls behind.

    faust -A examples.control_app worker -l info     # broker: $KAFKA_BOOTSTRAP_SERVERS

then feed it orders (JSON ``{"id": "o1", "quantity": 2, "unit_price": 9.5}``) on
``control-example-orders``, e.g. ``kafka-console-producer.sh --topic control-example-orders``,
and watch:

* ``http://localhost:6066/backpressure/ui``: the ``orders-api`` limiter's rate dropping from
  200/s while ``bill`` lags (severity CRITICAL or EMERGENCY, the loop's reason), then climbing
  back once the backlog is cleared; ``/backpressure/`` is the same as JSON;
* ``faust -A examples.control_app backpressure status`` (``--json`` for scripts): the same,
  read from Kafka, for the whole cluster; ``backpressure lag control-example`` the lag itself.

Topology (``bp.pipeline`` twice, one consumer group: the app's):

    control-example-orders --price (limiter "orders-api", 200/s shared by every worker)-->
    control-example-priced --bill (20/s per worker: a slow downstream)--> control-example-billed
    failures of either stage (bad JSON, quantity <= 0) --> control-example-dlq

``bp.control_loop`` samples the lag of the downstream group on ``control-example-priced``
every ``FAUST_BP_MONITORING_INTERVAL`` seconds and sets the rate of ``orders-api``. Here the
downstream is ``bill`` in this same app, so the group is the app's id; in production it is
usually another service's group (``downstream_group="billing"``).

Thresholds are example-sized unless set: ``FAUST_BP_MAX_CONSUMER_LAG`` (60 records; critical
lag 120), ``FAUST_BP_SCALING_THRESHOLD`` (30) and ``FAUST_BP_MONITORING_INTERVAL`` (0.5 s); the
library's defaults are 10,000, 5,000 and 5 s. Other settings: ``CONTROL_EXAMPLE_NAME`` (app id
and topic prefix, default ``control-example``), ``CONTROL_EXAMPLE_RATE`` (200),
``CONTROL_EXAMPLE_BILL_DELAY`` (0.05 s per record), ``CONTROL_EXAMPLE_WEB_PORT`` (6066).
``examples/operator_commands.py`` steers a running worker of this app from the command line.
"""

from __future__ import annotations

import asyncio
import os

import faust

from faust_backpressure import Backpressure
from faust_backpressure.testing.settings import fast_faust_settings

for _var, _value in {"FAUST_BP_MAX_CONSUMER_LAG": "60", "FAUST_BP_SCALING_THRESHOLD": "30",
                     "FAUST_BP_MONITORING_INTERVAL": "0.5"}.items():
    os.environ.setdefault(_var, _value)  # example-sized; the CLI commands see the same

NAME = os.environ.get("CONTROL_EXAMPLE_NAME", "control-example")
RATE = float(os.environ.get("CONTROL_EXAMPLE_RATE", "200"))
BILL_DELAY = float(os.environ.get("CONTROL_EXAMPLE_BILL_DELAY", "0.05"))
LIMITER = "orders-api"

app = faust.App(NAME, store="rocksdict://", **fast_faust_settings(
    web_enabled=True, web_port=int(os.environ.get("CONTROL_EXAMPLE_WEB_PORT", "6066"))))
bp = Backpressure(app)  # settings from FAUST_BP_* (above)


class Order(faust.Record, serializer="json"):
    id: str
    quantity: int
    unit_price: float


class PricedOrder(faust.Record, serializer="json"):
    id: str
    total: float


class Invoice(faust.Record, serializer="json"):
    id: str
    total: float
    invoice: str


orders = app.topic(f"{NAME}-orders", value_type=Order)
priced = app.topic(f"{NAME}-priced", value_type=PricedOrder)
billed = app.topic(f"{NAME}-billed", value_type=Invoice)
DLQ = f"{NAME}-dlq"


def price(order: Order) -> PricedOrder:
    if order.quantity <= 0:
        raise ValueError(f"order {order.id}: quantity must be positive, got {order.quantity}")
    return PricedOrder(id=order.id, total=round(order.quantity * order.unit_price, 2))


async def bill(order: PricedOrder) -> Invoice:
    await asyncio.sleep(BILL_DELAY)  # a slow downstream: a payment API, a database
    return Invoice(id=order.id, total=order.total, invoice=f"INV-{order.id}")


# Stage A: fast, limited by one distributed limiter that the control loop steers.
bp.pipeline("price", source=orders, sink=priced, process=price, dlq=DLQ, limiter=LIMITER,
            tokens_per_second=RATE, burst_capacity=RATE, max_retries=1, retry_backoff=0.05)
# Stage B: slow, unlimited; its lag on `priced` is what the loop watches.
bp.pipeline("bill", source=priced, sink=billed, process=bill, dlq=DLQ, max_retries=1,
            retry_backoff=0.05)
# Backpressure: thresholds and interval from the settings (FAUST_BP_*).
bp.control_loop(LIMITER, downstream_group=NAME, downstream_topics=[priced.get_topic_name()])
