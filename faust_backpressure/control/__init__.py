"""The backpressure control loop: a pure policy, a lag probe, the loop on Faust, credit flow.

``policy`` and ``credits`` are pure (no Faust, no I/O); ``probe`` measures a downstream group's
lag; ``loop`` (timer, pressure topic, deciding agent) and ``credit_flow`` run the policy and the
credit window on a Faust app.
"""

from faust_backpressure.control.credits import CreditBasedFlowController
from faust_backpressure.control.loop import ControlLoop
from faust_backpressure.control.policy import (
    BackpressureController,
    BackpressureSeverity,
    BackpressureThresholds,
    CircuitState,
    DownstreamRateEstimator,
    PressureDecision,
    PressureSample,
    SetPointTuning,
)
from faust_backpressure.control.shedding import PriorityShedder, ShedLevels

__all__ = ["BackpressureController", "BackpressureSeverity", "BackpressureThresholds",
           "CircuitState", "ControlLoop", "CreditBasedFlowController", "DownstreamRateEstimator",
           "PressureDecision", "PressureSample", "PriorityShedder", "SetPointTuning", "ShedLevels"]
