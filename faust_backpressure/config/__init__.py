"""Typed settings, read by every layer."""

from faust_backpressure.config.settings import BackpressureSettings, OnLimit

__all__ = ["BackpressureSettings", "OnLimit"]
