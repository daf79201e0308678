"""``Backpressure(app)``: the one object an app creates; thin, the logic lives in ``agents``."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from faust.types import AppT, TopicT

from faust_backpressure.agents import (
    Backoff,
    CostFunction,
    KeyedRateLimitGate,
    LimiterSpec,
    Pipeline,
    RateLimitGate,
    resolve_limiter,
)
from faust_backpressure.agents.downstream import Downstream, build_downstream
from faust_backpressure.agents.keyed import KeyedOnLimit, KeyFunction
from faust_backpressure.agents.quota_gate import SharedQuota
from faust_backpressure.app.cli import register_commands
from faust_backpressure.app.downstream_ops import (
    FailingRecord,
    QuotaReport,
    RecoveredRecord,
    SlowDownRecord,
    failing_key,
    quota_key,
    recovered_key,
    slow_down_key,
)
from faust_backpressure.app.pause import install_pause_control, worker_name
from faust_backpressure.app.registry import register
from faust_backpressure.app.views import register_views, snapshot
from faust_backpressure.config import BackpressureSettings, ControlPolicy, OnLimit
from faust_backpressure.config.validation import check_number
from faust_backpressure.control import (
    BackpressureThresholds,
    ControlLoop,
    CreditBasedFlowController,
)
from faust_backpressure.control.credit_flow import CreditFlow
from faust_backpressure.control.loop import ControlLoops
from faust_backpressure.control.shedding import ShedLevels
from faust_backpressure.faust_seam import (
    context_of,
    flow_stopped_event,
    refresh_consumer_metadata,
    send_control,
)
from faust_backpressure.faust_seam import install as install_faust_seam
from faust_backpressure.limiters import RateLimitingStrategy
from faust_backpressure.limiters.bucket import BURST_SECONDS
from faust_backpressure.limiters.concurrency import ConcurrencyLimit
from faust_backpressure.limiters.keyed_buckets import LimitsFor
from faust_backpressure.limiters.quota import PROBE_AFTER, QuotaLearner
from faust_backpressure.tables.service import find_channel, use_settings
from faust_backpressure.wire.kafka_clients import client_settings
from faust_backpressure.wire.topics import ops_topic

__all__ = ["Backpressure"]

AgentFunT = TypeVar("AgentFunT", bound=Callable[..., Any])
ConcurrencyLimitName = Literal["gradient", "vegas", "aimd", "fixed"]

#: A learnt quota's own shared limiter: its rate until the first slow-down sets one (unused
#: until then). Its burst follows the rate learnt (:func:`learnt_quota_burst`).
LEARNT_QUOTA_START = 1000.0


def learnt_quota_burst(rate: float) -> float:
    """The shared burst of a learnt quota at ``rate``: twice what the workers' local levels
    need (each lease's cap is 50 ms of its share, at least 2), and no more: a token saved
    above the called system's own burst is a 429 after an idle moment (docs/downstream.md,
    "The shared burst follows the rate learnt")."""
    return max(6.0, 2 * BURST_SECONDS * rate)
#: A guard's breaker stays open ``wait_in_open`` x [0.8, 1.2]: the workers' breakers open
#: together at an outage's start and must not probe in step (docs/downstream.md, "Probing an
#: outage").
BREAKER_JITTER = 0.2


class Backpressure:
    """Installs faust-backpressure on a Faust app: settings, limiters, topics, CLI.

    Example::

        app = faust.App("orders", broker="kafka://localhost:9092", store="rocksdict://")
        bp = Backpressure(app)

        @app.agent(orders)
        @bp.rate_limit("orders-api", tokens_per_second=1000, burst_capacity=2000)
        async def process(stream): ...
    """

    def __init__(self, app: AppT, settings: BackpressureSettings | None = None) -> None:
        self.app = app
        self.settings = settings if settings is not None else BackpressureSettings.from_env()
        self.pipelines: dict[str, Pipeline] = {}
        self.gates: list[RateLimitGate] = []
        self._control: ControlLoops | None = None
        self.credit_flows: list[CreditFlow] = []
        self.keyed_limits: dict[str, KeyedRateLimitGate] = {}
        self.downstreams: dict[str, Downstream] = {}
        #: The worker's follower of the ops topic, once started (see ``app.pause``).
        self.ops_follower: Any = None
        #: The app's one context (faust_seam/context.py). Its settings are bound here, so every
        #: distributed limiter, declared before or after, uses their secret and replication.
        self.context = context_of(app)
        use_settings(app, self.settings)
        register(app, self)
        # Offsets never pass an unprocessed record; exactly_once outputs commit with their
        # input's offsets (see faust_seam).
        install_faust_seam(app)
        app.task(self._declare_topics)
        register_commands()
        register_views(self)
        install_pause_control(self, snapshot)  # every worker follows `backpressure pause/resume`
        app.on_before_shutdown.connect(self._stop_downstreams)

    def limiter(self, spec: LimiterSpec, *, tokens_per_second: float | None = None,
                burst_capacity: float | None = None) -> RateLimitingStrategy:
        """A limiter object, a shared limiter by id (one per id per app), or tiers."""
        return resolve_limiter(self.app, spec, tokens_per_second=tokens_per_second,
                               burst_capacity=burst_capacity)

    def rate_limit(self, limiter: LimiterSpec, *, tokens_per_second: float | None = None,
                   burst_capacity: float | None = None, on_limit: OnLimit | None = None,
                   cost: CostFunction | None = None, shed_topic: str | TopicT | None = None
                   ) -> Callable[[AgentFunT], AgentFunT]:
        """Decorator for an agent function: put it under ``@app.agent(topic)``."""
        gate = RateLimitGate(
            self.app, self.limiter(limiter, tokens_per_second=tokens_per_second,
                                   burst_capacity=burst_capacity),
            on_limit=on_limit or self.settings.on_limit, cost=cost, shed_topic=shed_topic,
            shed_topic_suffix=self.settings.shed_topic_suffix)
        self.gates.append(gate)
        return gate

    def rate_limit_per_key(self, name: str, *, key: KeyFunction | None = None,
                           tokens_per_second: float, burst_capacity: float | None = None,
                           on_limit: KeyedOnLimit = "defer", cost: CostFunction | None = None,
                           limits: LimitsFor | None = None, partitions: int | None = None,
                           store: str | None = "rocksdict://",
                           shed_topic: str | TopicT | None = None) -> KeyedRateLimitGate:
        """One bucket per key (``key(event)``, default the record's key), kept in a table
        co-partitioned with the source: decorate an agent, under ``@app.agent(topic)``, or
        pass as a pipeline's ``limiter=``. See ``docs/keyed.md``."""
        if name in self.keyed_limits:
            raise ValueError(f"keyed limit {name!r} is already declared")
        gate = KeyedRateLimitGate(
            self.app, name, key=key, tokens_per_second=tokens_per_second,
            burst_capacity=burst_capacity, on_limit=on_limit, cost=cost, limits=limits,
            partitions=partitions, store=store, shed_topic=shed_topic,
            shed_topic_suffix=self.settings.shed_topic_suffix,
            deferral_topic_suffix=self.settings.deferral_topic_suffix,
            replicas=self.settings.internal_replication_factor)
        self.keyed_limits[name] = gate
        return gate

    def pipeline(self, name: str, *, source: str | TopicT,
                 sink: str | TopicT | Sequence[str | TopicT] | None,
                 process: Callable[[Any], Any] | None = None,
                 dlq: str | TopicT | None = None,
                 limiter: LimiterSpec | KeyedRateLimitGate | None = None,
                 tokens_per_second: float | None = None,
                 burst_capacity: float | None = None, on_limit: OnLimit | None = None,
                 max_retries: int | None = None, retry_backoff: float | Backoff | None = None,
                 concurrency: int | None = None, priority: Callable[[Any], int] | None = None,
                 downstream: Downstream | None = None, ordered_by_key: bool = False,
                 process_batch: Callable[[list[Any]], Any] | None = None,
                 batch_size: int = 500, batch_timeout: float = 0.05) -> Pipeline:
        """Declare a pipeline agent ``source -> process -> sink(s)``, failures to ``dlq``.

        ``priority``: a value's priority (higher is more important): under a control loop's
        load shedding the lowest priorities are shed first (``docs/control-loop.md``).
        ``downstream``: a guard from :meth:`downstream` that ``process`` calls through, with
        up to ``concurrency`` events in progress (default: the guard's ``max_concurrency``,
        else 1); ``ordered_by_key``: per record key, one event at a time, in order (batch
        pipelines: each key's outputs in input order, retried events included).
        ``process_batch`` (instead of ``process``): a list of values in, one result per value
        out, ``batch_size`` records or ``batch_timeout`` s at most (``docs/batching.md``)."""
        if name in self.pipelines:
            raise ValueError(f"pipeline {name!r} is already declared")
        if limiter is None and (tokens_per_second is not None or burst_capacity is not None):
            raise ValueError(f"pipeline {name!r}: tokens_per_second/burst_capacity without "
                             "limiter= would not limit anything; pass limiter='<id>' (shared "
                             "by every worker) or a limiter object")
        keyed = limiter if isinstance(limiter, KeyedRateLimitGate) else None
        resolved = None if limiter is None or isinstance(limiter, KeyedRateLimitGate) else \
            self.limiter(limiter, tokens_per_second=tokens_per_second,
                         burst_capacity=burst_capacity)
        pipeline = Pipeline(self.app, name, source=source, sink=sink, process=process, dlq=dlq,
                            limiter=resolved, on_limit=on_limit or self.settings.on_limit,
                            max_retries=max_retries, retry_backoff=retry_backoff,
                            concurrency=concurrency, settings=self.settings,
                            priority=priority, keyed=keyed, downstream=downstream,
                            ordered_by_key=ordered_by_key, process_batch=process_batch,
                            batch_size=batch_size, batch_timeout=batch_timeout)
        self.pipelines[name] = pipeline
        return pipeline

    def downstream(self, name: str, *, max_concurrency: int = 64, min_concurrency: int = 1,
                   initial_concurrency: int | None = None,
                   limit: ConcurrencyLimitName | ConcurrencyLimit = "gradient",
                   rate_limit: LimiterSpec | None = None, tokens_per_second: float | None = None,
                   burst_capacity: float | None = None,
                   failure_rate_threshold: float = 0.5, slow_call_rate_threshold: float = 1.0,
                   slow_call_duration: float = 5.0, window: float = 2.0,
                   minimum_calls: int = 10, wait_in_open: float = 1.25,
                   half_open_calls: int = 2, probe_rate: float = 1.0,
                   default_retry_after: float = 1.0, max_retry_after: float = 300.0,
                   unavailable: Callable[[BaseException], bool] | None = None,
                   learn_quota: bool = True, share_quota: bool = True,
                   max_rate: float = math.inf,
                   quota_probe_after: float = PROBE_AFTER) -> Downstream:
        """A guard for a system the app calls (see ``docs/downstream.md``): a limit on calls
        in flight per worker learnt from latency (``limit``: ``"gradient"``, ``"vegas"``,
        ``"aimd"``, ``"fixed"`` at ``max_concurrency``, or a :class:`ConcurrencyLimit`), slow-downs
        honoured by every worker, a circuit breaker whose open state makes calls wait, and
        optionally a rate limiter (``rate_limit``: an id shared by every worker, or an
        object). ``unavailable(exc)``: whether an exception means the system is down
        (retried once the breaker allows, never dead-lettered); default
        :func:`~faust_backpressure.agents.downstream.is_unavailable`. ``learn_quota``: after
        a slow-down, keep to the rate the system served, probing above it now and then
        (at most ``max_rate``; see :class:`~faust_backpressure.limiters.quota.QuotaLearner`);
        ``quota_probe_after``: seconds near the learnt quota before probing above it (sooner
        finds a raised quota sooner, at the cost of more 429s while it is unchanged);
        ``share_quota``: learn it as one rate for every worker, kept by the shared limiter
        ``rate_limit`` (its rate: the quota to start from), or by one of its own,
        ``downstream-<name>`` (see :mod:`~faust_backpressure.agents.quota_gate`).
        ``probe_rate``: the most calls/s per worker while the breaker is not closed (its
        probes, whatever prompts them: rounds, recovery news, short slow-downs).
        """
        if name in self.downstreams:
            raise ValueError(f"downstream {name!r} is already declared")
        check_number("quota_probe_after", quota_probe_after, 0)
        rate = None if rate_limit is None else self.limiter(
            rate_limit, tokens_per_second=tokens_per_second, burst_capacity=burst_capacity)
        quota: SharedQuota | None = None
        if learn_quota and share_quota:
            quota = self._shared_quota(name, rate, burst_capacity, max_rate, quota_probe_after)
            rate = None  # the quota's permits are the limiter's
        guard = build_downstream(
            name, max_concurrency=max_concurrency, min_concurrency=min_concurrency,
            initial_concurrency=initial_concurrency, limit=limit, rate=rate, quota=quota,
            breaker=dict(failure_rate_threshold=failure_rate_threshold,
                         slow_call_rate_threshold=slow_call_rate_threshold,
                         slow_call_duration=slow_call_duration, window=window,
                         minimum_calls=minimum_calls, wait_in_open=wait_in_open,
                         half_open_calls=half_open_calls, sequential_probes=True,
                         open_jitter=BREAKER_JITTER, probe_rate=probe_rate),
            default_retry_after=default_retry_after, max_retry_after=max_retry_after,
            unavailable=unavailable, publish=self._publish_slow_down,
            publish_recovery=self._publish_recovery, publish_failing=self._publish_failing,
            learn_quota=learn_quota, max_rate=max_rate, probe_after=quota_probe_after)
        guard.flow_stopped = functools.partial(flow_stopped_event, self.app)
        self.downstreams[name] = guard
        return guard

    def _shared_quota(self, name: str, rate: RateLimitingStrategy | None,
                      burst_capacity: float | None, max_rate: float,
                      probe_after: float) -> SharedQuota:
        """A guard's quota learnt as one rate for every worker: kept by ``rate`` (the quota
        to start from), or by a limiter of its own whose burst follows the rate learnt."""
        own = rate is None and not burst_capacity
        shared = rate if rate is not None else self.limiter(
            f"downstream-{name}", tokens_per_second=max_rate if math.isfinite(max_rate)
            else LEARNT_QUOTA_START, burst_capacity=burst_capacity or learnt_quota_burst(0.0))
        # backing off from what all were served finds a fallen quota in one episode: a
        # steeper second step only undershoots
        learner = QuotaLearner(max_rate=max_rate, fast_backoff=0.8, probe_after=probe_after)
        return SharedQuota(name, learner, shared, worker=worker_name(),
                           reporter=self._publish_quota_report, wall_clock=time.time,
                           given=rate is not None, burst_of=learnt_quota_burst if own else None)

    async def _stop_downstreams(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        for guard in self.downstreams.values():
            await guard.stop()

    def _downstream_error_rate(self) -> float | None:
        """The highest failure rate of the guarded systems (None: none guarded)."""
        return max((guard.error_rate for guard in self.downstreams.values()), default=None)

    async def _publish_slow_down(self, dependency: str, until: float) -> None:
        record = SlowDownRecord(dependency, until, worker_name(), time.time())
        await send_control(self.app, ops_topic(str(self.app.conf.id)), slow_down_key(dependency),
                           record.encode(self.settings.secret_key))

    async def _publish_recovery(self, dependency: str, at: float) -> None:
        record = RecoveredRecord(dependency, worker_name(), at)
        await send_control(self.app, ops_topic(str(self.app.conf.id)), recovered_key(dependency),
                           record.encode(self.settings.secret_key))

    async def _publish_failing(self, dependency: str, until: float) -> None:
        record = FailingRecord(dependency, until, worker_name(), time.time())
        await send_control(self.app, ops_topic(str(self.app.conf.id)), failing_key(dependency),
                           record.encode(self.settings.secret_key))

    async def _publish_quota_report(self, dependency: str, episode: float,
                                    served: float, whole: bool) -> None:
        report = QuotaReport(dependency, episode, served, worker_name(), time.time(), whole)
        await send_control(self.app, ops_topic(str(self.app.conf.id)),
                           quota_key(f"{dependency}/{report.by}"),
                           report.encode(self.settings.secret_key))

    def control_loop(self, limiter: LimiterSpec, *, downstream_group: str,
                     downstream_topics: Sequence[str], interval: float | None = None,
                     thresholds: BackpressureThresholds | None = None,
                     baseline_rate: float | None = None,
                     tokens_per_second: float | None = None,
                     burst_capacity: float | None = None,
                     name: str | None = None, shed_on_critical: bool = False,
                     policy: ControlPolicy | None = None,
                     shed_levels: ShedLevels | None = None,
                     count_uncommitted: bool = False) -> ControlLoop:
        """Put ``limiter`` under the backpressure control loop (see docs/control-loop.md).

        Every ``interval`` seconds each worker samples ``downstream_group``'s lag on
        ``downstream_topics``, the limiter's utilization and CPU; one worker decides the rate.
        ``interval`` defaults to the ``monitoring_interval`` setting and ``thresholds`` to
        :meth:`BackpressureThresholds.from_settings` (``FAUST_BP_MAX_CONSUMER_LAG``, ...).
        ``shed_on_critical``: above the critical lag, this limiter's gates send refused events
        to their shed topic instead of waiting (explicit load shedding; off by default);
        gates with a priority function shed by priority instead, on the ``shed_levels``
        ladder (default :class:`ShedLevels`: priority 0 first, then 1, then 2).
        ``policy``: ``"setpoint"`` or ``"step"``, default the ``control_policy`` setting
        (``FAUST_BP_CONTROL_POLICY``). ``count_uncommitted``: a downstream group that has
        committed nothing on the topics (a typo, a consumer not started) is a warning and is
        not throttled on until it commits; True counts its whole backlog as lag instead.
        """
        if self._control is None:
            self._control = ControlLoops(self.app, kafka=client_settings(self.app, "lag-probe"),
                                         secret=self.settings.secret_key,
                                         max_clock_skew=self.settings.max_clock_skew)
            self._control.error_rate = self._downstream_error_rate
        resolved = self.limiter(limiter, tokens_per_second=tokens_per_second,
                                burst_capacity=burst_capacity)
        loop = self._control.add(ControlLoop(
            self._control, resolved, downstream_group=downstream_group,
            downstream_topics=downstream_topics,
            interval=self.settings.monitoring_interval if interval is None else interval,
            thresholds=(BackpressureThresholds.from_settings(self.settings)
                        if thresholds is None else thresholds),
            baseline_rate=baseline_rate, name=name, shed_on_critical=shed_on_critical,
            shed_levels=shed_levels, count_uncommitted=count_uncommitted,
            gates=self.all_gates,
            policy=self.settings.control_policy if policy is None else policy))
        return loop

    def all_gates(self) -> list[RateLimitGate]:
        """Gates of decorated agents and of pipelines."""
        return [*self.gates, *(p.gate for p in self.pipelines.values() if p.gate is not None)]

    def credit_flow(self, window: int, *, downstream_group: str,
                    downstream_topics: Sequence[str], interval: float = 1.0,
                    name: str | None = None, shared: bool = False,
                    control_loop: ControlLoop | None = None) -> CreditBasedFlowController:
        """A credit window for an upstream stage: at most ``window`` records more than
        ``downstream_group`` has processed of ``downstream_topics`` (per worker; with
        ``shared=True`` for the whole stage, split among its live workers); use it as
        the limiter of the stage that writes them (see ``docs/control-loop.md``).
        ``control_loop``: the window shrinks with its decisions (x decided rate / baseline).
        """
        flow = CreditFlow(self.app, kafka=client_settings(self.app, "credit-probe"), window=window,
                          downstream_group=downstream_group,
                          downstream_topics=downstream_topics, interval=interval,
                          name=name or f"{downstream_group}-{len(self.credit_flows)}",
                          shared=shared,
                          scale=None if control_loop is None else control_loop.rate_share)
        self.credit_flows.append(flow)
        return flow.controller

    @property
    def registered_limiters(self) -> list[RateLimitingStrategy]:
        """The app's limiters shared by id (one per id, however they were made)."""
        channel = find_channel(self.app)
        return [] if channel is None else list(channel.limiters.values())

    @property
    def rejections(self) -> dict[str, dict[str, int]]:
        """Internal records this worker rejected, by topic (``requests``, ``grants``, ``ops``,
        ``pressure``) and reason (see ``docs/security.md``)."""
        out: dict[str, dict[str, int]] = {}
        channel = find_channel(self.app)
        if channel is not None:
            out["requests"] = dict(channel.rejections.by_reason)
            out["grants"] = dict(channel.reply_rejections.by_reason)
        if self._control is not None:
            out["pressure"] = dict(self._control.rejections.by_reason)
        if self.ops_follower is not None:
            out["ops"] = dict(self.ops_follower.rejections.by_reason)
        return out

    @property
    def control_loops(self) -> dict[str, ControlLoop]:
        return {} if self._control is None else dict(self._control.loops)

    async def _declare_topics(self) -> None:
        # Sinks and DLQs are written, never subscribed: Faust would not create them itself.
        for pipeline in self.pipelines.values():
            for topic in pipeline.topics:
                await topic.maybe_declare()
        for keyed in self.keyed_limits.values():  # else assigned only at the next rebalance
            await keyed.deferral_topic.maybe_declare()
        if self._control is not None:  # consumed by the deciding agent: see below
            await self._control.pressure_topic.maybe_declare()
        # Topics consumed here that did not exist when the consumer subscribed would be
        # ignored until the next rebalance: fresh metadata makes the group assign them now.
        await refresh_consumer_metadata(self.app)
