"""Typed settings, read by every layer."""

from faust_backpressure.config.settings import (
    BackpressureSettings,
    OnLimit,
    bind_settings,
    internal_replicas,
    settings_for,
)

__all__ = ["BackpressureSettings", "OnLimit", "bind_settings", "internal_replicas",
           "settings_for"]
