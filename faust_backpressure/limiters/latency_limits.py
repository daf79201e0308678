"""Limits on calls in flight learnt from latency: Netflix's Gradient2 and Vegas.

Both compare a short-term round-trip time with a long-term (or no-load) one once per round,
and grow the limit while the queue they infer stays small. Pure: time comes in the samples
(see :mod:`.concurrency`).

Example::

    limit = GradientLimit(initial=20, max_limit=200)
    limit.on_sample(start_time=t0, rtt=0.012, in_flight=17, dropped=False)
    limit.limit   # -> int in [min_limit, max_limit]
"""

from __future__ import annotations

import math
from collections.abc import Callable

from faust_backpressure.config.validation import check_int, check_number
from faust_backpressure.limiters.concurrency import _check_ratio, _Limit

__all__ = ["GradientLimit", "VegasLimit"]


class _Ema:
    """Exponential moving average over ``window`` values; a plain mean while warming up."""

    __slots__ = ("count", "factor", "value", "warmup")

    def __init__(self, window: int, warmup: int = 10) -> None:
        self.factor = 2.0 / (window + 1)
        self.warmup = min(window, warmup)
        self.count = 0
        self.value = 0.0

    def add(self, x: float) -> float:
        if self.count < self.warmup:
            self.count += 1
            self.value += (x - self.value) / self.count
        else:
            self.value += (x - self.value) * self.factor
        return self.value

    @property
    def warm(self) -> bool:
        return self.count >= self.warmup


class _Round:
    """Samples of one round trip: a round ends with the first call that started after the
    previous round ended (calls that did not yet see the last update do not count twice)."""

    __slots__ = ("drop", "end", "max_in", "n", "sum")

    def __init__(self) -> None:
        self.end = -math.inf
        self.clear()

    def clear(self) -> None:
        self.sum, self.n, self.max_in, self.drop = 0.0, 0, 0, False

    def add(self, start_time: float, rtt: float, in_flight: int, dropped: bool
            ) -> tuple[float, int, bool] | None:
        """The round's (mean RTT of its calls that were not dropped, 0.0 if none; most in
        flight; any drop) when this sample ends it. A dropped call's time is its timeout or
        a fast refusal, not the system's latency (an outage's fast 503s would pull the
        baseline down: ``docs/benchmarks.md``, "Protecting a called system")."""
        if not dropped:
            self.sum += rtt
            self.n += 1
        self.max_in = max(self.max_in, in_flight)
        self.drop = self.drop or dropped
        if start_time < self.end:
            return None
        done = (self.sum / self.n if self.n else 0.0, self.max_in, self.drop)
        self.clear()
        self.end = start_time + rtt
        return done


def _sqrt_queue(limit: int) -> float:
    return math.sqrt(limit)


class _RoundLimit(_Limit):
    """What Gradient and Vegas share: a float estimate moved once per round (smoothed, or
    backed off on a drop), and a baseline measured afresh every ``probe_interval`` rounds."""

    __slots__ = ("_estimate", "_round", "_rounds", "backoff_ratio", "probe_interval",
                 "smoothing")

    def __init__(self, initial: int, min_limit: int, max_limit: int, smoothing: float,
                 backoff_ratio: float, probe_interval: int | None) -> None:
        super().__init__(initial, min_limit, max_limit)
        self.smoothing = check_number("smoothing", smoothing, 0, strict=True)
        if self.smoothing > 1:
            raise ValueError(f"smoothing must be <= 1, got {smoothing!r}")
        self.backoff_ratio = _check_ratio("backoff_ratio", backoff_ratio)
        self.probe_interval = None if probe_interval is None else check_int(
            "probe_interval", probe_interval, 1)
        self._estimate = float(initial)
        self._rounds = 0  # counted toward the next probe
        self._round = _Round()

    def _set_estimate(self, new: float) -> None:
        """The estimate becomes ``new`` within the bounds; the limit follows it."""
        self._estimate = min(float(self.max_limit), max(float(self.min_limit), new))
        self._publish(self._estimate)


class GradientLimit(_RoundLimit):
    """Netflix Gradient2: a short-term RTT average compared with a long-term one.

    Once per *round* (see below), with ``short`` and ``long`` the two averages::

        gradient = clamp(tolerance * long / short, 0.5, 1.0)
        new = limit * gradient + queue_size(limit)          # sqrt(limit) by default
        limit = limit * (1 - smoothing) + new * smoothing   # clamped to [min, max]

    With no queueing ``gradient == 1`` and the limit grows by ``queue_size``; queueing
    raises ``short`` and pulls the limit down until the latency it adds is within
    ``tolerance``. A round with a drop backs off (``* backoff_ratio``) instead; a round
    using less than half the limit does not grow it. When ``long > 2 * short``
    (recovering after a long overload) ``long`` decays 5% a round toward ``short``.

    Differences from Netflix's per-sample Gradient2, each against a failure seen in
    simulation (rtt = service_time * max(1, in_flight / servers)):

    * **Rounds.** Samples are averaged over a round trip: a round ends with the first
      call that started after the previous update. Per-call updates act on calls that
      did not yet see the previous change, and the limit oscillates. Netflix gets the
      same from a time window; ``short_window`` and ``long_window`` count rounds.
    * **The baseline does not learn queueing.** ``long`` learns only from rounds
      without a queueing signal (``short <= tolerance * long``). Otherwise it follows a
      sustained overload and the limit drifts up to ``max_limit``.
    * **Probes.** So that the baseline is not stale (a backend that got slower for
      good, or a start already overloaded), the limit drops to ``queue_size(limit)``
      until a few calls started at that concurrency; their mean RTT becomes ``long``
      and the previous limit is restored. The first probe comes once the averages are
      warm (10 rounds), then one every ``probe_interval`` rounds (``None``: never).
      Each costs about two round trips at low concurrency.

    Example::

        limit = GradientLimit(initial=20, max_limit=500)
        limiter = ConcurrencyLimiter(limit)
    """

    __slots__ = ("_long", "_probe_done", "_probe_from", "_probe_n", "_probe_sum", "_saved",
                 "_short", "queue_size", "tolerance")

    def __init__(
        self,
        initial: int = 20,
        min_limit: int = 1,
        max_limit: int = 200,
        *,
        tolerance: float = 1.5,
        smoothing: float = 0.2,
        long_window: int = 600,
        short_window: int = 10,
        queue_size: float | Callable[[int], float] = _sqrt_queue,
        backoff_ratio: float = 0.9,
        probe_interval: int | None = 500,
    ) -> None:
        super().__init__(initial, min_limit, max_limit, smoothing, backoff_ratio, probe_interval)
        self.tolerance = check_number("tolerance", tolerance, 1)
        self._long = _Ema(check_int("long_window", long_window, 1))
        self._short = _Ema(check_int("short_window", short_window, 1))
        if callable(queue_size):
            self.queue_size: Callable[[int], float] = queue_size
        else:
            size = check_number("queue_size", queue_size, 0)
            self.queue_size = lambda _limit: size
        self._saved = 0.0
        self._probe_from = math.inf  # < inf while probing
        self._probe_sum, self._probe_n = 0.0, 0
        self._probe_done = False

    @property
    def probing(self) -> bool:
        """True while the limit is lowered to measure the unloaded RTT."""
        return self._probe_from < math.inf

    @property
    def long_rtt(self) -> float:
        """The baseline: long-term average RTT of rounds without queueing."""
        return self._long.value

    @property
    def short_rtt(self) -> float:
        """Short-term average RTT (of rounds)."""
        return self._short.value

    def on_sample(self, start_time: float, rtt: float, in_flight: int, dropped: bool) -> None:
        end = start_time + rtt
        if self.probing:
            self._probe_sample(start_time, rtt, in_flight, dropped, end)
            return
        if (done := self._round.add(start_time, rtt, in_flight, dropped)) is None:
            return
        self._update(*done)
        self._rounds += 1
        if self.probe_interval is not None and self._rounds >= (
                self.probe_interval if self._probe_done else self._long.warmup):
            self._start_probe(end)

    def _update(self, rtt: float, in_flight: int, dropped: bool) -> None:
        short, long = self._short.value, self._long.value
        if rtt > 0.0:  # 0.0: every call of the round was dropped, no latency to read
            short = self._short.add(rtt)
            if not self._long.warm or short <= self.tolerance * long:
                long = self._long.add(rtt)  # else queueing: keep the baseline
            if long > 2.0 * short:
                self._long.value = long = long * 0.95
        limit = self._estimate
        if dropped:
            new = limit * self.backoff_ratio
        elif in_flight * 2 < limit:
            return  # app limited: no evidence that more would be fine
        else:
            ratio = self.tolerance * long / short if short > 0.0 else 1.0
            gradient = max(0.5, min(1.0, ratio))
            new = limit * gradient + self.queue_size(int(limit))
            new = limit * (1.0 - self.smoothing) + new * self.smoothing
        self._set_estimate(new)

    def _start_probe(self, now: float) -> None:
        self._saved = self._estimate
        self._probe_from = now
        self._probe_sum, self._probe_n = 0.0, 0
        self._round.clear()
        size = int(self.queue_size(int(self._estimate)))  # the probe's concurrency
        self._publish(min(self._limit, max(self.min_limit, size, 1)))

    def _probe_sample(self, start_time: float, rtt: float, in_flight: int, dropped: bool,
                      end: float) -> None:
        # Only calls started after the drop, at the probe's concurrency, measure it; a
        # dropped call's RTT is its timeout, not the backend's latency.
        if dropped or start_time < self._probe_from or in_flight > self._limit:
            return
        self._probe_sum += rtt
        self._probe_n += 1
        if self._probe_n < max(3, self._limit):
            return
        self._long.value = self._probe_sum / self._probe_n
        self._long.count = max(self._long.count, self._long.warmup)
        self._probe_from = math.inf
        self._probe_done = True
        self._rounds = 0
        self._round.end = end
        self._set_estimate(self._saved)  # within the bounds already


class VegasLimit(_RoundLimit):
    """TCP Vegas (Netflix's ``VegasLimit``): the queue a limit builds, from the RTT.

    With ``no_load`` the lowest RTT seen (the baseline), a round's average ``rtt`` puts
    ``queue = limit * (1 - no_load / rtt)`` calls waiting at the backend. Once per round
    (as :class:`GradientLimit`: a round ends with the first call started after the last
    update), with ``log = log10(limit)``::

        queue <= log          ->  limit + 6 log   (far from any queue: grow fast)
        queue <  3 log        ->  limit + log
        queue >  6 log        ->  limit - max(log, (queue - 6 log) / 2)
        a drop in the round   ->  limit * backoff_ratio

    then smoothed (``limit * (1 - smoothing) + new * smoothing``). A round using less than
    half the limit does not grow it. Every ``probe_interval`` rounds the baseline is
    measured afresh (the next round's RTT), so a backend that got slower for good is not
    read as queueing forever.

    Example::

        limit = VegasLimit(initial=20, max_limit=500)
        limiter = ConcurrencyLimiter(limit)
    """

    __slots__ = ("_no_load", "_reprobe")

    def __init__(self, initial: int = 20, min_limit: int = 1, max_limit: int = 200, *,
                 smoothing: float = 1.0, backoff_ratio: float = 0.9,
                 probe_interval: int | None = 1000) -> None:
        super().__init__(initial, min_limit, max_limit, smoothing, backoff_ratio, probe_interval)
        self._no_load = math.inf
        self._reprobe = False

    @property
    def no_load_rtt(self) -> float:
        """The baseline: the lowest round RTT since the last probe (inf: none yet)."""
        return self._no_load

    def on_sample(self, start_time: float, rtt: float, in_flight: int, dropped: bool) -> None:
        if (done := self._round.add(start_time, rtt, in_flight, dropped)) is None:
            return
        avg, max_in, drop = done
        self._rounds += 1
        if self._reprobe:
            self._no_load, self._reprobe = avg, False
        if self.probe_interval is not None and self._rounds % self.probe_interval == 0:
            self._reprobe = True  # the next round's RTT is the new baseline
        self._update(avg, max_in, drop)

    def _update(self, rtt: float, in_flight: int, dropped: bool) -> None:
        if not dropped and rtt > 0.0:
            self._no_load = min(self._no_load, rtt)
        limit = self._estimate
        if dropped:
            new = limit * self.backoff_ratio
        elif in_flight * 2 < limit or rtt <= 0.0:
            return  # app limited (or no latency to read): no evidence either way
        else:
            log = max(1.0, math.log10(limit))
            queue = limit * (1.0 - self._no_load / rtt)
            if queue <= log:
                new = limit + 6 * log
            elif queue < 3 * log:
                new = limit + log
            elif queue > 6 * log:  # half the excess queue a round: Netflix's -log is far
                new = limit - max(log, (queue - 6 * log) / 2)  # slower (docs/downstream.md)
            else:
                return
            new = limit * (1.0 - self.smoothing) + new * self.smoothing
        self._set_estimate(new)
