"""Credit-based flow control: at most ``window`` records outstanding downstream. Pure, no I/O.

Credits are buffer slots downstream, not time (as in Apache Flink's network flow control):
the downstream stage's backlog is announced from time to time, and the upstream may send
``window - backlog`` records until the next announcement. With no announcement no credit comes
back, so a stalled downstream stops the upstream after one window. It speaks the limiter
protocol, so a gate or a pipeline takes it as its limiter.

Example::

    credits = CreditBasedFlowController(window=10_000)
    credits.announce(backlog=9_990)      # e.g. downstream consumer lag, once a second
    credits.try_acquire(10)              # True; the 11th waits for the next announcement

Shared by a stage's workers: ``window`` is then the stage's, and each announcement says how
many workers share it (``members``) and how much of it the control loop allows now
(``scale``): this worker's credits are its share of ``window * scale - backlog`` (see
:func:`shared_credits`).
"""

from __future__ import annotations

import math
import time

from faust_backpressure.config.validation import check_int, check_number, is_int
from faust_backpressure.limiters.base import LimiterBase

__all__ = ["CreditBasedFlowController", "shared_credits"]


def shared_credits(window: int, backlog: int, members: int = 1, scale: float = 1.0,
                   in_flight: int = 0, *, per_worker: bool = False,
                   sent: int | None = None) -> tuple[int, int]:
    """A credit ``window`` scaled by ``scale`` (in (0, 1]: e.g. the control loop's decided
    rate over its baseline), for one of ``members`` workers: ``(this worker's window, its
    credits)``.

    ``window`` is the stage's (``per_worker=False``: each worker gets ``stage // members``,
    at least 1) or each worker's (``per_worker=True``: the stage's is ``window * members``).
    Credits are the worker's share of what the stage may still send, ``(stage - backlog) //
    members``, less ``in_flight`` (what this worker sent that the measured ``backlog`` may not
    hold yet); and, when ``sent`` (this worker's own records not yet processed) is known, at
    most ``window - sent``: at least 0, at most its window. With ``sent`` the workers together
    never have more than the stage's window outstanding (give or take an event between the
    gate and its send per worker), whenever each measured; see ``docs/control-loop.md``."""
    check_int("window", window, 1)
    check_int("backlog", backlog, 0)
    check_int("in_flight", in_flight, 0)
    members = max(1, check_int("members", members, 0))
    scale = min(check_number("scale", scale, 0), 1.0)
    scaled = max(1, int(window * scale))
    stage = scaled * members if per_worker else scaled
    share = max(1, stage // members)
    credits = min(max((stage - backlog) // members - in_flight, 0), share)
    if sent is not None:
        credits = min(credits, max(share - check_int("sent", sent, 0), 0))
    return share, credits


class CreditBasedFlowController(LimiterBase):
    """Admits records while credits last; :meth:`announce` returns credits; FIFO waiters
    (:class:`~faust_backpressure.limiters.LimiterBase`'s, woken by announcements: a missing
    credit has no time to wait for)."""

    __slots__ = ("_credits", "_members", "_scale", "per_worker", "stage_window", "window")

    def __init__(self, window: int, *, initial_credits: int | None = None,
                 per_worker: bool = False) -> None:
        """``per_worker``: ``window`` is each worker's, not the stage's (when announcements
        say how many workers there are; see :func:`shared_credits`)."""
        self.window = check_int("window", window, 1)
        self.per_worker = per_worker
        #: The configured window; ``window`` is this worker's share of it (all of it unless
        #: announcements say that several workers share it or the control loop scales it).
        self.stage_window = self.window
        self._members, self._scale = 1, 1.0
        if initial_credits is None:
            initial_credits = self.window
        if not is_int(initial_credits) or not 0 <= initial_credits <= self.window:
            raise ValueError(f"initial_credits must be an int in [0, window], "
                             f"got {initial_credits!r}")
        self._credits = initial_credits
        super().__init__(time.monotonic, 1.0)

    @property
    def credits(self) -> int:
        return self._credits

    def announce(self, backlog: int, *, members: int = 1, scale: float = 1.0,
                 in_flight: int = 0, sent: int | None = None) -> None:
        """The downstream has ``backlog`` records still to process: ``window - backlog`` left;
        shared by ``members`` workers, scaled by ``scale``, less what this worker has
        ``in_flight`` and at most ``window - sent``: see :func:`shared_credits`."""
        self.window, self._credits = shared_credits(
            self.stage_window, backlog, members, scale, in_flight,
            per_worker=self.per_worker, sent=sent)
        self._members, self._scale = max(1, members), min(scale, 1.0)
        self._notify()

    def _admit(self, permits: int, now: float) -> bool:
        if permits > self._credits:
            return False
        self._credits -= permits
        return True

    def _delay(self, permits: float, now: float) -> float:
        """0 if the credits exist now; otherwise unknown (they come with an announcement)."""
        return 0.0 if permits <= self._credits else math.inf

    def _max_permits(self) -> float:
        """The window: a request for more could never be served."""
        return float(self.window)

    def _tokens(self) -> float:
        return float(self._credits)

    @property
    def current_rate_limit(self) -> float:
        """The window (records outstanding at most), in the protocol's rate slot."""
        return float(self.window)

    @property
    def current_utilization(self) -> float:
        return (self.window - self._credits) / self.window

    def update_rate_limit(self, new_rate: float) -> None:
        """A new (stage) window; this worker's credits change as much as its share."""
        self.stage_window = int(check_number("new_rate (the window)", new_rate, 1))
        scaled = max(1, int(self.stage_window * self._scale))
        share = scaled if self.per_worker else max(1, scaled // self._members)
        self._credits = max(self._credits + share - self.window, 0)
        self.window = share
        self._notify()

    def reset(self) -> None:
        self.window, self._members, self._scale = self.stage_window, 1, 1.0
        self._credits = self.window
        self._reset_counters(self._clock())
        self._notify()
