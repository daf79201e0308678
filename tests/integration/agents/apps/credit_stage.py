"""A stage under a credit window, for the process-level test: source -> sink, limited by a
credit window on the downstream group FBP_BILLING (which never commits in the test).

Env: FBP_APP_ID, FBP_SOURCE, FBP_SINK, FBP_BILLING, FBP_WINDOW, FBP_SHARED (1: the window is
the stage's, split among its live workers; 0: per worker).
"""

import os

import faust

from faust_backpressure.app import Backpressure
from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://", **fast_faust_settings())
bp = Backpressure(app)
credits = bp.credit_flow(int(os.environ["FBP_WINDOW"]),
                         downstream_group=os.environ["FBP_BILLING"],
                         downstream_topics=[os.environ["FBP_SINK"]], interval=0.2,
                         shared=os.environ.get("FBP_SHARED") == "1")
bp.pipeline("stage", source=os.environ["FBP_SOURCE"], sink=os.environ["FBP_SINK"],
            process=lambda value: value, limiter=credits)
