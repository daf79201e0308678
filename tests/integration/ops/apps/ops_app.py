"""A worker for the operator-command tests: a pipeline behind a distributed limiter under a
control loop, and a second distributed limiter no loop touches.

Env: FBP_APP_ID, FBP_SOURCE, FBP_SINK, FBP_DOWN_GROUP, FBP_DOWN_TOPIC (also watched by a
credit flow); FBP_WEB_PORT: serve the web pages there (on 127.0.0.1); FBP_GUARANTEE
(at_least_once, the default, or exactly_once).
"""

import os

import faust

from faust_backpressure.app import Backpressure
from faust_backpressure.control import BackpressureThresholds
from faust_backpressure.testing.settings import fast_faust_settings

port = os.environ.get("FBP_WEB_PORT")
web = {} if port is None else {"web_enabled": True, "web_port": int(port),
                               "web_bind": "127.0.0.1", "web_host": "127.0.0.1"}
app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://",
                processing_guarantee=os.environ.get("FBP_GUARANTEE", "at_least_once"),
                **fast_faust_settings(**web))
bp = Backpressure(app)
bp.pipeline("orders", source=os.environ["FBP_SOURCE"], sink=os.environ["FBP_SINK"],
            process=lambda value: value, limiter="ops-api", tokens_per_second=200)
bp.limiter("ops-free", tokens_per_second=100)
bp.control_loop("ops-api", downstream_group=os.environ["FBP_DOWN_GROUP"],
                downstream_topics=[os.environ["FBP_DOWN_TOPIC"]], interval=0.5,
                thresholds=BackpressureThresholds(backlog_cleared_lag=10, scaling_threshold=50,
                                                  max_consumer_lag=100, critical_lag=200,
                                                  cpu_threshold=1.0))
bp.credit_flow(500, downstream_group=os.environ["FBP_DOWN_GROUP"],
               downstream_topics=[os.environ["FBP_DOWN_TOPIC"]], name="billing-credits")
