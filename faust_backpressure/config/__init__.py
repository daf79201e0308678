"""Typed settings, read by every layer."""

from faust_backpressure.config.settings import (
    CONTROL_POLICIES,
    BackpressureSettings,
    ControlPolicy,
    OnLimit,
    bind_settings,
    internal_replicas,
    settings_for,
)

__all__ = ["CONTROL_POLICIES", "BackpressureSettings", "ControlPolicy", "OnLimit",
           "bind_settings", "internal_replicas", "settings_for"]
