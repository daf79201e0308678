"""Typed settings of faust-backpressure and their defaults.

``BackpressureSettings()`` gives the defaults; ``BackpressureSettings.from_env()`` reads
``FAUST_BP_<FIELD>`` variables (e.g. ``FAUST_BP_MAX_CONSUMER_LAG=20000``). Invalid values raise
``ValueError`` naming the setting as the user wrote it (field name, or env variable name).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from faust_backpressure.config.env_check import warn_unknown_variables
from faust_backpressure.config.errors import settings_errors
from faust_backpressure.config.validation import check_int, check_number

__all__ = ["CONTROL_POLICIES", "BackpressureSettings", "ControlPolicy", "OnLimit",
           "effective_restore_lag"]

#: What a rate-limited agent does with an event the limiter refuses.
OnLimit = Literal["wait", "shed"]
_ON_LIMIT = ("wait", "shed")
#: The control loop's policy: hold the downstream lag at a set point, or the reference
#: guide's multiplicative steps (see docs/control-loop.md).
ControlPolicy = Literal["setpoint", "step"]
#: Every ``ControlPolicy`` (what ``FAUST_BP_CONTROL_POLICY`` may be).
CONTROL_POLICIES: tuple[ControlPolicy, ...] = ("setpoint", "step")


def effective_restore_lag(restore_lag: int | None, max_consumer_lag: int,
                          scaling_threshold: int) -> int:
    """Lag under which throttled rates are restored: ``restore_lag`` when set, else half of
    ``max_consumer_lag`` capped at ``scaling_threshold`` (between it and ``scaling_threshold``
    the rate holds, so throttling does not flap)."""
    if restore_lag is not None:
        return restore_lag
    return min(max_consumer_lag // 2, scaling_threshold)


@dataclass(frozen=True)
class BackpressureSettings:
    """Settings read by every layer (limiters, tables, agents, app).

    The control loop throttles a limiter while the downstream lag is above
    ``scaling_threshold`` (5,000 records), treats a lag above ``max_consumer_lag`` (10,000) with
    a fully used limiter, or above twice it, as an emergency, and samples every
    ``monitoring_interval`` (5 s). Rates are restored below
    ``min(max_consumer_lag / 2, scaling_threshold)`` unless ``restore_lag`` says otherwise
    (hysteresis, so throttling does not flap). ``control_policy`` picks the loop's policy:
    ``"setpoint"`` (default) holds the downstream lag near half the scaling threshold at the
    downstream's measured pace, ``"step"`` is the reference guide's ``x 0.9`` / ``+10%``.
    ``max_lag_seconds`` (optional) bounds how far behind the downstream may be in time
    (lag / its processing rate).

    ``secret`` (``FAUST_BP_SECRET``, the same on every worker): when set, every internal record
    (lease requests, grants, commands, acks, pressure samples) carries an HMAC-SHA256 made with
    it and receivers reject records without a valid one (see ``docs/security.md``). Records
    stamped more than ``max_clock_skew`` seconds in the future, or older than their protocol
    allows, are rejected as well.
    """

    max_consumer_lag: int = 10_000
    scaling_threshold: int = 5_000
    restore_lag: int | None = None
    monitoring_interval: float = 5.0
    on_limit: OnLimit = "wait"
    dlq_topic_suffix: str = "-dlq"
    shed_topic_suffix: str = "-shed"
    max_retries: int = 3
    retry_backoff: float = 0.1
    retry_backoff_max: float = 5.0
    traceback_limit: int = 4096
    replay_rate: float = 1000.0
    secret: str | None = dataclasses.field(default=None, repr=False)  # never in logs or reprs
    max_clock_skew: float = 10.0
    #: Replication factor of the topics faust-backpressure declares (limiter requests and
    #: grants, the pressure topic, the limiter and control table changelogs, DLQs the pipeline
    #: declares by name). ``None``: the app's ``topic_replication_factor``, the factor Faust
    #: gives every topic it creates (Faust's CreateTopics request cannot say "broker default").
    internal_replication_factor: int | None = None
    control_policy: ControlPolicy = "setpoint"
    max_lag_seconds: float | None = None
    #: Keyed limits: the deferral topic of limit NAME is ``<app id>-NAME<suffix>``.
    deferral_topic_suffix: str = "-deferred"
    #: Token the worker's write endpoints (``POST /backpressure/api/...``: set-rate, reset,
    #: emergency-stop, restore, pause, resume) require as ``Authorization: Bearer <token>``;
    #: ``None`` (default): they answer 401 to everyone. Read-only pages never need it.
    admin_token: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        with settings_errors():
            _validate(self, lambda name: name)

    @property
    def effective_restore_lag(self) -> int:
        """Lag under which throttled rates are restored: ``max_consumer_lag // 2`` capped at
        ``scaling_threshold``, unless ``restore_lag`` is set."""
        return effective_restore_lag(self.restore_lag, self.max_consumer_lag,
                                     self.scaling_threshold)

    @property
    def secret_key(self) -> bytes | None:
        """``secret`` as the HMAC key (UTF-8), or ``None`` when records are not signed."""
        return None if self.secret is None else self.secret.encode()

    def replace(self, **changes: Any) -> BackpressureSettings:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, prefix: str = "FAUST_BP_",
                 environ: Mapping[str, str] | None = None, **overrides: Any
                 ) -> BackpressureSettings:
        """Defaults, overridden by ``{prefix}{FIELD}`` variables, overridden by ``overrides``."""
        env = os.environ if environ is None else environ
        warn_unknown_variables(prefix, env, [f.name for f in fields(cls)])
        values: dict[str, Any] = {f.name: _parse(f.type, env[var]) for f in fields(cls)
                                  if (var := prefix + f.name.upper()) in env}
        from_env = set(values) - set(overrides)
        values.update(overrides)
        settings = cls.__new__(cls)
        defaults = cls()
        for f in fields(cls):
            object.__setattr__(settings, f.name, values.get(f.name, getattr(defaults, f.name)))
        with settings_errors():  # one line naming the setting if nothing catches it
            _validate(settings, lambda name: prefix + name.upper() if name in from_env else name)
        return settings


def _parse(type_name: Any, raw: str) -> Any:
    """Convert by the field's declared type; unparsable text is returned as is, so validation
    reports it with the setting's constraint (one error message per setting)."""
    text = raw.strip()
    kind = str(type_name)
    optional = kind.endswith("None")
    if kind.startswith("str") and optional:
        return text or None  # FAUST_BP_SECRET= (empty) means no secret
    for number in (int, float):
        if kind.startswith(number.__name__):
            if optional and text.lower() in ("", "none"):
                return None
            try:
                return number(text)
            except ValueError:
                return raw
    return text


#: Integer settings and their minimum.
_INTEGERS = {"max_consumer_lag": 1, "scaling_threshold": 1, "restore_lag": 0, "max_retries": 0,
             "traceback_limit": 0, "internal_replication_factor": 1}
#: Number settings, each ``> 0`` (True: strictly) or ``>= 0`` (False).
_NUMBERS = {"monitoring_interval": True, "retry_backoff": False, "retry_backoff_max": False,
            "replay_rate": True, "max_clock_skew": True, "max_lag_seconds": True}
#: The numeric settings that may be unset (``None``).
_OPTIONAL = frozenset({"restore_lag", "internal_replication_factor", "max_lag_seconds"})


def _validate(s: BackpressureSettings, name: Callable[[str], str]) -> None:
    for field, minimum in _INTEGERS.items():
        if getattr(s, field) is not None or field not in _OPTIONAL:
            check_int(name(field), getattr(s, field), minimum)
    for field, strict in _NUMBERS.items():
        if getattr(s, field) is not None or field not in _OPTIONAL:
            check_number(name(field), getattr(s, field), 0, strict=strict)
    for field in ("secret", "admin_token"):
        value = getattr(s, field)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{name(field)} must be a non-empty string or unset")
    for field, choices in (("control_policy", CONTROL_POLICIES), ("on_limit", _ON_LIMIT)):
        value = getattr(s, field)
        if value not in choices:
            raise ValueError(f"{name(field)} must be one of {', '.join(choices)}, "
                             f"got {value!r}")
    for field in ("dlq_topic_suffix", "shed_topic_suffix", "deferral_topic_suffix"):
        value = getattr(s, field)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name(field)} must be a non-empty string, got {value!r}")
    if s.scaling_threshold > s.max_consumer_lag:
        raise ValueError(f"{name('scaling_threshold')} must be <= "
                         f"{name('max_consumer_lag')} ({s.max_consumer_lag}), "
                         f"got {s.scaling_threshold}")
    if s.effective_restore_lag > s.scaling_threshold:
        raise ValueError(f"{name('restore_lag')} must be <= {name('scaling_threshold')} "
                         f"({s.scaling_threshold}) so throttling does not flap, "
                         f"got {s.effective_restore_lag}")
    if s.retry_backoff_max < s.retry_backoff:
        raise ValueError(f"{name('retry_backoff_max')} must be >= {name('retry_backoff')} "
                         f"({s.retry_backoff:g}), got {s.retry_backoff_max!r}")

