"""Typed settings, read by every layer."""

from faust_backpressure.config.env_check import UnknownSettingWarning
from faust_backpressure.config.errors import SettingsError
from faust_backpressure.config.settings import (
    CONTROL_POLICIES,
    BackpressureSettings,
    ControlPolicy,
    OnLimit,
)

__all__ = ["CONTROL_POLICIES", "BackpressureSettings", "ControlPolicy", "OnLimit",
           "SettingsError", "UnknownSettingWarning"]
