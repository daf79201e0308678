"""The decorator shape shared by ``@bp.rate_limit`` and ``@bp.rate_limit_per_key``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from faust.types import AgentT, StreamT

__all__ = ["decorate_agent"]

AgentFunT = TypeVar("AgentFunT", bound=Callable[..., Any])


class Gate(Protocol):
    agent_name: str

    def install(self, stream: StreamT[Any]) -> None: ...


def decorate_agent(gate: Gate, fun: AgentFunT, decorator: str) -> AgentFunT:
    """``fun`` installing ``gate`` on its stream; ``decorator`` names it in the error."""
    if isinstance(fun, AgentT):
        # Above @app.agent the agent has already captured the undecorated function: it
        # would run unlimited without a word.
        raise TypeError(
            f"{decorator} is above @app.agent on {fun.name!r}: put it under @app.agent "
            "(the agent would run unlimited)")
    if not gate.agent_name:
        gate.agent_name = getattr(fun, "__qualname__", repr(fun))

    @functools.wraps(fun)
    def agent(stream: StreamT[Any], *args: Any, **kwargs: Any) -> Any:
        gate.install(stream)
        return fun(stream, *args, **kwargs)

    agent._bp_gate = gate  # type: ignore[attr-defined]
    return agent  # type: ignore[return-value]
