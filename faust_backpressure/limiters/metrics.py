"""Field metadata that makes a field of a stats dataclass a Prometheus metric as well.

The views show a stats dataclass's fields as they are (JSON) and export each field made with
:func:`counter` or :func:`gauge` as ``<prefix>_<field>[_total]``, so a new counter is one field.
"""

from __future__ import annotations

__all__ = ["counter", "gauge"]


def counter(help_text: str) -> dict[str, str]:
    """``field(metadata=counter(...))``: the field is also a Prometheus counter
    (``<prefix>_<field>_total``)."""
    return {"metric": "counter", "help": help_text}


def gauge(help_text: str) -> dict[str, str]:
    """``field(metadata=gauge(...))``: the field is also a Prometheus gauge
    (``<prefix>_<field>``)."""
    return {"metric": "gauge", "help": help_text}
