"""One :class:`AppContext` per Faust app: every piece of per-app state of faust-backpressure.

The context is kept on the app object itself and reached through :func:`context_of`, the one
accessor, so the state lives and dies with its app. It imports nothing above ``config``: each
layer above hangs its part on it under a :class:`Slot` that layer declares, read through a typed
getter of that layer (``tables.service.find_channel``, ``app.registry.installed``, ...). Options
given again for a part that exists already must agree with it, else :class:`ConflictingOption`
names the option (docs/architecture.md, "One context per app").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from faust_backpressure.config import BackpressureSettings
from faust_backpressure.errors import ConflictingOption

__all__ = ["AppContext", "Slot", "context_of", "find_context"]

T = TypeVar("T")

# The app attribute holding its context (an attribute of ours on a Faust object: seam business).
_ATTRIBUTE = "_fbp_context"
# Settings whose values never appear in messages (as in BackpressureSettings' repr).
_HIDDEN = frozenset(f.name for f in dataclasses.fields(BackpressureSettings) if not f.repr)


class Slot(Generic[T]):
    """The typed key of one layer's part of the context (declared once, by that layer)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Slot({self.name!r})"


class AppContext:
    """The per-app state: bound settings, the seam's state, and the parts of upper layers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        #: The settings ``Backpressure(app)`` was made with; None before (or without) it.
        self.bound_settings: BackpressureSettings | None = None
        #: The seam's patches are on the app (:func:`~.installing.install`).
        self.seam_installed = False
        #: Topics whose writes are control traffic (:func:`~.control_topics.mark_control_topic`).
        self.control_topics: set[str] = set()
        self._parts: dict[Slot[Any], Any] = {}

    @property
    def settings(self) -> BackpressureSettings:
        """The bound settings, else ``BackpressureSettings.from_env()`` (read at each call, so
        a part declared before ``Backpressure(app)`` sees the environment of that moment)."""
        bound = self.bound_settings
        return bound if bound is not None else BackpressureSettings.from_env()

    def bind_settings(self, settings: BackpressureSettings) -> None:
        """Record the app's settings; different settings bound before raise
        :class:`ConflictingOption` naming the settings that differ."""
        bound = self.bound_settings
        if bound is not None and bound != settings:
            differ = [f.name for f in dataclasses.fields(settings)
                      if getattr(bound, f.name) != getattr(settings, f.name)]
            shown = ", ".join(name if name in _HIDDEN else
                              f"{name} ({getattr(bound, name)!r} then "
                              f"{getattr(settings, name)!r})" for name in differ)
            raise ConflictingOption(differ, f"app {self.app.conf.id!r} already has "
                                    f"Backpressure settings; these differ: {shown}")
        self.bound_settings = settings

    def get(self, slot: Slot[T]) -> T | None:
        """The part under ``slot``, or None if the layer has not put one."""
        part: T | None = self._parts.get(slot)
        return part

    def put(self, slot: Slot[T], part: T) -> T:
        """Keep ``part`` under ``slot`` (replacing the one before) and return it."""
        self._parts[slot] = part
        return part

    def get_or_make(self, slot: Slot[T], make: Callable[[], T]) -> T:
        """The part under ``slot``, made by ``make()`` on first use."""
        part = self.get(slot)
        return self.put(slot, make()) if part is None else part


def find_context(app: object) -> AppContext | None:
    """The context of ``app`` if it has one (anything else: None); makes none."""
    context = getattr(app, _ATTRIBUTE, None)
    return context if isinstance(context, AppContext) else None


def context_of(app: Any) -> AppContext:
    """The one context of ``app``, made on first use."""
    context = find_context(app)
    if context is None:
        context = AppContext(app)
        setattr(app, _ATTRIBUTE, context)
    return context
