"""What an app's limiter channel is declared with: made once, with the channel, never swapped.

The secret and clock skew are the options given to the channel's first limiter, else the app's
settings, read through the app's context (so settings ``Backpressure(app)`` binds after the
channel count too). Anything given later that disagrees raises :class:`ConflictingOption`
naming the option, instead of being ignored.
"""

from __future__ import annotations

from typing import Any

from faust_backpressure.config import BackpressureSettings
from faust_backpressure.errors import ConflictingOption
from faust_backpressure.faust_seam import context_of

__all__ = ["ChannelOptions"]


class ChannelOptions:
    """The channel's partitions, secret and clock skew, and the settings its topics were
    declared with."""

    def __init__(self, app: Any, *, partitions: int | None, secret: bytes | None,
                 max_clock_skew: float | None) -> None:
        self.app_id = app.conf.id
        self.context = context_of(app)
        #: The settings when the channel was declared (bound, else the environment's).
        self.declared_with = self.context.settings
        self.partitions: int = partitions or app.conf.topic_partitions
        self._secret, self._skew = secret, max_clock_skew

    @property
    def settings(self) -> BackpressureSettings:
        """The app's settings: bound by ``Backpressure(app)``, else the declaration's."""
        return self.context.bound_settings or self.declared_with

    @property
    def secret(self) -> bytes | None:
        return self.settings.secret_key if self._secret is None else self._secret

    @property
    def max_clock_skew(self) -> float:
        return self.settings.max_clock_skew if self._skew is None else self._skew

    def check(self, *, partitions: int | None = None, secret: bytes | None = None,
              max_clock_skew: float | None = None) -> None:
        """Options given again (by another limiter) must be the channel's."""
        given = {"partitions": (partitions, self.partitions), "secret": (secret, self.secret),
                 "max_clock_skew": (max_clock_skew, self.max_clock_skew)}
        for option, (value, current) in given.items():
            if value is not None and value != current:
                self._conflict(option, "declared with", current, value, "give the same "
                               f"{option} to every distributed limiter of the app, or give it once")

    def check_settings(self, settings: BackpressureSettings) -> None:
        """Settings bound after the channel was declared must agree with it: an option given to
        it, or the replication factor its topics were declared with, that a setting sets (not
        at its default) to another value raises."""
        defaults = BackpressureSettings()
        # (the channel's, the settings', the default); an option not given is the settings'
        declared: dict[str, tuple[object, object, object]] = {
            "internal_replication_factor": (
                self.declared_with.internal_replication_factor,
                settings.internal_replication_factor, defaults.internal_replication_factor)}
        if self._secret is not None:
            declared["secret"] = (self._secret, settings.secret_key, None)
        if self._skew is not None:
            declared["max_clock_skew"] = (self._skew, settings.max_clock_skew,
                                          defaults.max_clock_skew)
        for option, (current, value, default) in declared.items():
            if value != current and value != default:
                self._conflict(option, "declared before these settings, with", current, value,
                               "give its limiters and the settings the same one, or bind the "
                               "settings (Backpressure(app, settings)) first")

    def _conflict(self, option: str, how: str, current: object, value: object,
                  remedy: str) -> None:
        shown = "" if option == "secret" else f" ({current!r}, not {value!r})"
        raise ConflictingOption(option, f"the limiter channel of app {self.app_id!r} was "
                                f"{how} another {option}{shown}: {remedy}")
