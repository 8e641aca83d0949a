"""Prometheus metrics: request counts, latency, tokens, cost, errors and live state.

:meth:`Metrics.observe` turns each finished request's
:class:`~sidecar.telemetry.record.RequestRecord` into counter and histogram updates;
breakers, pools, streams and the tracing counters are read at scrape time from the
callables given to the ``set_*`` methods, by a collector of this object's own registry
(the global registry is never used). Names and labels are fixed: the Grafana dashboard
(``observability/grafana-dashboard.json``) queries them.

Label values are bounded: models, clusters and tiers must be in the sets given at
construction (else ``unknown``; a missing value is ``none``), outcomes and error kinds
come from fixed vocabularies (else ``other``). Pool names and live-state names come
from the running policy.
"""

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, TypeGuard

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.domain.policy import Policy
from sidecar.telemetry.accounting_metrics import AccountingMetrics
from sidecar.telemetry.record import ERROR_OUTCOMES, OUTCOMES, UNKNOWN, RequestRecord

_LOGGER = logging.getLogger(__name__)

NONE: Final = "none"
"""The label for a value the request never had (no cluster chosen, no tier known)."""
OTHER: Final = "other"
"""The label for a value outside a fixed vocabulary."""

LATENCY_BUCKETS_S: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
    5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0,
)  # fmt: skip
"""From a cached answer (milliseconds) to a long generation (minutes)."""

COST_BUCKETS_USD: Final = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
    1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
"""From a short embedding (a millionth of a dollar) to a long premium answer."""

ERROR_CODES: Final = frozenset(
    {
        # sidecar/domain/outcome.py
        "missing_api_key",
        "invalid_api_key",
        "invalid_token",
        "unknown_tenant",
        "model_not_found",
        "model_not_allowed",
        "unsupported_endpoint",
        "invalid_body",
        "request_too_large",
        "method_not_allowed",
        "too_many_requests",
        "overloaded",
        "model_unavailable",
        "queue_full",
        "unknown_endpoint",
        "budget_exceeded",
        "rate_limit_exceeded",
        "invalid_job_id",
        "unsupported_request",
        # sidecar/extproc
        "sidecar_misconfigured",
        "sidecar_internal_error",
        "failover_misconfigured",
        "failover_hop_refused",
    }
)
"""Every error code the sidecar answers with."""

ADMIN_CHANGE_KINDS: Final = frozenset(
    {"flags", "alerts", "breakers", "canaries", "reload", "queues"}
)

RELOAD_RESULTS: Final = frozenset({"applied", "refused", "unchanged"})

BREAKER_STATES: Final = {"closed": 0, "half_open": 1, "open": 2}
"""The breaker gauge's value for each state."""

_ROUTE: Final = ("model", "cluster", "tier")
_SERVED_BY: Final = ("model", "cluster")

_TRACING_COUNTERS: Final = (
    ("spans_exported", "Spans the OTLP exporter delivered."),
    ("spans_export_failed", "Spans in batches the OTLP exporter failed to deliver."),
    ("spans_dropped", "Spans dropped because the export queue was full (or shut down)."),
)


class Metrics:
    """The metrics sink, with its own registry; :meth:`render` is the scrape answer."""

    def __init__(
        self,
        known_models: Iterable[str],
        known_clusters: Iterable[str],
        known_tiers: Iterable[str],
        *,
        known_tenants: Iterable[str] = (),
        known_teams: Iterable[str] = (),
        known_budgets: Iterable[str] = (),
    ) -> None:
        self._models = frozenset(known_models)
        self._clusters = frozenset(known_clusters)
        self._tiers = frozenset(known_tiers)
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        """Labelled series by metric and label values: ``labels()`` checks and locks on
        every call, and label values are bounded, so each series is looked up once."""
        self.accounting = AccountingMetrics(
            self.registry, self._models, known_tenants, known_teams, known_budgets
        )
        self._live = _LiveStateCollector()
        self._define_request_metrics()
        self._transitions = self._counter(
            "ai_sidecar_breaker_transitions_total",
            "Circuit breaker state changes.",
            ("cluster", "from_state", "to_state"),
        )
        self._reloads = self._counter(
            "ai_sidecar_policy_reloads_total",
            "Policy reloads, by result: applied, refused (the running policy stays), unchanged.",
            ("result",),
        )
        self._variant_requests = self._counter(
            "ai_sidecar_variant_requests_total",
            "Requests of canary routes, by variant (baseline, canary) and result: ok, error "
            "(the variant's cluster failed, even if another then answered) or other.",
            ("model", "tier", "variant", "result"),
        )
        self._variant_latency = self._histogram(
            "ai_sidecar_variant_time_to_first_token_seconds",
            "Time to the answer's headers on canary routes, by variant.",
            ("model", "tier", "variant"),
            LATENCY_BUCKETS_S,
        )
        self._rollbacks = self._counter(
            "ai_sidecar_canary_rollbacks_total",
            "Canaries rolled back on their own (weight set to 0).",
            ("model", "tier"),
        )
        self._admin_changes = self._counter(
            "ai_sidecar_admin_changes_total",
            "Admin calls that changed something, by kind: flags, alerts, breakers, "
            "canaries, reload, queues.",
            ("kind",),
        )
        self._flag_changes = self._counter(
            "ai_sidecar_flag_changes_total",
            "Feature flag switches, by flag, new state and source (api, webhook).",
            ("flag", "state", "source"),
        )
        self.registry.register(self._live)

    def _counter(self, name: str, doc: str, labels: tuple[str, ...]) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _histogram(
        self, name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> Histogram:
        return Histogram(name, doc, labels, registry=self.registry, buckets=buckets)

    def _define_request_metrics(self) -> None:
        self._requests = self._counter(
            "ai_sidecar_requests_total",
            "Requests finished, by how they ended.",
            (*_ROUTE, "outcome"),
        )
        self._duration = self._histogram(
            "ai_sidecar_request_duration_seconds",
            "From the request's headers to the end of its response.",
            _ROUTE,
            LATENCY_BUCKETS_S,
        )
        self._ttft = self._histogram(
            "ai_sidecar_time_to_first_token_seconds",
            "From the request's headers to the upstream's response headers.",
            _SERVED_BY,
            LATENCY_BUCKETS_S,
        )
        self._tokens = self._counter(
            "ai_sidecar_tokens_total",
            "Tokens the upstreams reported, by direction (input, output).",
            (*_ROUTE, "direction"),
        )
        self._cost = self._counter(
            "ai_sidecar_cost_usd_total",
            "Cost of the requests in US dollars, at the policy's prices.",
            _ROUTE,
        )
        self._request_cost = self._histogram(
            "ai_sidecar_request_cost_usd",
            "Cost of one request in US dollars.",
            _SERVED_BY,
            COST_BUCKETS_USD,
        )
        self._errors = self._counter(
            "ai_sidecar_errors_total",
            "Requests that failed, by kind: an error code, or upstream_429/4xx/5xx.",
            (*_SERVED_BY, "kind"),
        )
        self._shed = self._counter(
            "ai_sidecar_shed_total", "Requests a full pool turned away.", ("pool", "tier")
        )
        self._fallbacks = self._counter(
            "ai_sidecar_fallbacks_total",
            "Requests served by a fallback cluster (labelled with the cluster that served).",
            _SERVED_BY,
        )

    def observe(self, record: RequestRecord) -> None:
        """Count a finished request."""
        model = _bounded(record.model, self._models)
        cluster = _bounded(record.cluster, self._clusters)
        tier = _bounded(record.tier, self._tiers)
        outcome = record.outcome if record.outcome in OUTCOMES else OTHER
        self._series(self._requests, (model, cluster, tier, outcome)).inc()
        self._observe(self._duration, (model, cluster, tier), record.duration_s)
        self._observe(self._ttft, (model, cluster), record.time_to_first_byte_s)
        self._count_usage(record, model, cluster, tier)
        self.accounting.observe(record)
        if record.variant is not None:
            self._count_variant(record, model, tier)
        kind = error_kind(record)
        if kind is not None:
            self._series(self._errors, (model, cluster, kind)).inc()
        if record.outcome == "shed":
            self._series(self._shed, (record.pool or NONE, tier)).inc()
        if record.fallback_depth > 0 or record.rung == "fallback":
            self._series(self._fallbacks, (model, cluster)).inc()

    def _count_usage(self, record: RequestRecord, model: str, cluster: str, tier: str) -> None:
        for direction, tokens in (("input", record.input_tokens), ("output", record.output_tokens)):
            self._increase(self._tokens, (model, cluster, tier, direction), tokens)
        self._increase(self._cost, (model, cluster, tier), record.cost_usd)
        self._observe(self._request_cost, (model, cluster), record.cost_usd)

    def _count_variant(self, record: RequestRecord, model: str, tier: str) -> None:
        variant = record.variant if record.variant in ("baseline", "canary") else OTHER
        if record.variant_failed is None:
            result = "other"  # passed over by a flag or a budget: not the variant's doing
        else:
            result = "error" if record.variant_failed else "ok"
        self._series(self._variant_requests, (model, tier, variant, result)).inc()
        self._observe(self._variant_latency, (model, tier, variant), record.time_to_first_byte_s)

    def canary_rolled_back(self, model: str, tier: str) -> None:
        """Count a canary taken out on its own."""
        self._rollbacks.labels(_bounded(model, self._models), _bounded(tier, self._tiers)).inc()

    def _series(self, metric: Counter | Histogram, labels: tuple[str, ...]) -> Any:
        """The series of ``metric`` with ``labels``, created on first use."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _increase(self, counter: Counter, labels: tuple[str, ...], amount: float | None) -> None:
        """Add ``amount`` if it is measurable; no series is created otherwise."""
        if _measurable(amount):
            self._series(counter, labels).inc(amount)

    def _observe(self, histogram: Histogram, labels: tuple[str, ...], value: float | None) -> None:
        """Observe ``value`` if it is measurable; no series is created otherwise."""
        if _measurable(value):
            self._series(histogram, labels).observe(value)

    def breaker_transition(self, cluster: str, old: str, new: str) -> None:
        """Count a breaker's change of state (states as in ``BreakerState`` values)."""
        self._transitions.labels(
            _bounded(cluster, self._clusters), _breaker_state(old), _breaker_state(new)
        ).inc()

    def learn_policy(self, policy: Policy) -> None:
        """Take the names a (new) policy defines as the label values to keep."""
        self._models = frozenset(policy.models)
        self._clusters = frozenset(policy.clusters)
        self._tiers = frozenset(policy.tiers)
        self.accounting.learn(
            models=self._models,
            tenants=policy.tenants,
            teams={t.team for t in policy.tenants.values() if t.team is not None},
            budgets=[budget.name for budget in policy.budgets],
        )

    def admin_change(self, kind: str) -> None:
        """Count an admin call that changed something."""
        self._admin_changes.labels(kind if kind in ADMIN_CHANGE_KINDS else OTHER).inc()

    def policy_reloaded(self, result: str) -> None:
        """Count a reload: ``applied``, ``refused`` or ``unchanged``."""
        self._reloads.labels(result if result in RELOAD_RESULTS else OTHER).inc()

    def flag_changed(self, flag: str, on: bool, source: str) -> None:
        """Count a flag switch (flag names come from the policy)."""
        self._flag_changes.labels(flag, "on" if on else "off", source).inc()

    def set_flag_states(self, states: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        """Read each flag's state (``FlagBoard.snapshot``) at each scrape."""
        self._live.flag_states = states

    def set_live_state(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        """Read breakers, in-flight calls and pools from ``snapshot()`` at each scrape.

        The mapping has the shape of ``Fleet.snapshot``: ``clusters`` by name with
        ``breaker`` and ``in_flight``, ``pools`` by name with ``in_use``,
        ``max_concurrent`` and ``waiting``.
        """
        self._live.snapshot = snapshot

    def set_tracing_stats(self, stats: Callable[[], Mapping[str, int]]) -> None:
        """Read the span counters from ``stats()`` (``Tracing.stats``) at each scrape."""
        self._live.tracing_stats = stats

    def set_stream_count(self, active: Callable[[], int]) -> None:
        """Read the number of open ext_proc streams from ``active()`` at each scrape."""
        self._live.stream_count = active

    def render(self) -> tuple[bytes, str]:
        """The exposition of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _bounded(value: str | None, known: frozenset[str]) -> str:
    if value is None:
        return NONE
    return value if value in known else UNKNOWN


def _breaker_state(state: str) -> str:
    return state if state in BREAKER_STATES else OTHER


def _measurable(value: float | None) -> TypeGuard[float]:
    """A value a counter or histogram can take: known, finite and not negative."""
    return value is not None and math.isfinite(value) and value >= 0


def error_kind(record: RequestRecord) -> str | None:
    """What kind of error the request ended in; None if it did not end in one.

    A rejected, shed or failed request's kind is its error code (``other`` outside
    :data:`ERROR_CODES`); an upstream's error answer's is ``upstream_429``, ``_4xx``
    or ``_5xx``.
    """
    if record.outcome in ERROR_OUTCOMES:
        if record.error_code is not None:
            return record.error_code if record.error_code in ERROR_CODES else OTHER
        return _status_kind(record.status) or OTHER
    return _status_kind(record.status)


def _status_kind(status: int | None) -> str | None:
    if status is None or status < 400:
        return None
    if status == 429:
        return "upstream_429"
    return "upstream_5xx" if status >= 500 else "upstream_4xx"


class _LiveStateCollector(Collector):
    """Gauges and counters read at scrape time from the callables it is given.

    A callable that is not set yields nothing; one that fails is logged and skipped, so
    the rest of the scrape still answers.
    """

    def __init__(self) -> None:
        self.snapshot: Callable[[], Mapping[str, Any]] | None = None
        self.tracing_stats: Callable[[], Mapping[str, int]] | None = None
        self.stream_count: Callable[[], int] | None = None
        self.flag_states: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None

    def describe(self) -> Iterable[Metric]:
        return [
            *_state_families({}),
            _streams_family(0),
            *_tracing_families({}),
            _flags_family({}),
        ]

    def collect(self) -> Iterable[Metric]:
        snapshot, count, stats = self.snapshot, self.stream_count, self.tracing_stats
        if snapshot is not None:
            yield from _guarded("live state", lambda: _state_families(snapshot()))
        if count is not None:
            yield from _guarded("stream count", lambda: [_streams_family(count())])
        if stats is not None:
            yield from _guarded("tracing stats", lambda: _tracing_families(stats()))
        flags = self.flag_states
        if flags is not None:
            yield from _guarded("flags", lambda: [_flags_family(flags())])


def _guarded(what: str, families: Callable[[], Iterable[Metric]]) -> Iterator[Metric]:
    try:
        built = list(families())
    except Exception:
        _LOGGER.warning("metrics: cannot read the %s", what, exc_info=True)
        return
    yield from built


def _gauge(name: str, doc: str, label: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=(label,))


def _state_families(snapshot: Mapping[str, Any]) -> list[Metric]:
    breaker = _gauge(
        "ai_sidecar_breaker_state", "Breaker state: 0 closed, 1 half-open, 2 open.", "cluster"
    )
    in_flight = _gauge(
        "ai_sidecar_cluster_in_flight", "Calls the cluster is answering now.", "cluster"
    )
    latency = GaugeMetricFamily(
        "ai_sidecar_cluster_latency_seconds",
        "Live latency of the cluster's recent answered calls: p50 and p95 of the time to "
        "first token (ttft) and of the total time.",
        labels=("cluster", "kind", "quantile"),
    )
    for name, cluster in snapshot.get("clusters", {}).items():
        state = BREAKER_STATES.get(str(cluster.get("breaker")))
        if state is not None:
            breaker.add_metric((str(name),), state)
        in_flight.add_metric((str(name),), float(cluster.get("in_flight", 0)))
        for key, value in (cluster.get("latency") or {}).items():
            kind, _, quantile = key.removesuffix("_s").partition("_p")
            if value is not None and quantile.isdigit():
                label = f"{int(quantile) / 100:g}"
                latency.add_metric((str(name), kind, label), float(value))
    return [breaker, in_flight, latency, *_pool_families(snapshot.get("pools", {}))]


def _pool_families(pools: Mapping[str, Mapping[str, Any]]) -> list[Metric]:
    in_use = _gauge("ai_sidecar_pool_in_use", "Slots of the pool held now.", "pool")
    capacity = _gauge("ai_sidecar_pool_capacity", "Slots of the pool (max_concurrent).", "pool")
    waiting = _gauge("ai_sidecar_pool_waiting", "Requests waiting for a slot of the pool.", "pool")
    for name, pool in pools.items():
        in_use.add_metric((str(name),), float(pool.get("in_use", 0)))
        capacity.add_metric((str(name),), float(pool.get("max_concurrent", 0)))
        waiting.add_metric((str(name),), float(pool.get("waiting", 0)))
    return [in_use, capacity, waiting]


def _streams_family(active: int) -> Metric:
    return GaugeMetricFamily(
        "ai_sidecar_streams_active", "Open ext_proc streams (requests in progress).", value=active
    )


def _tracing_families(stats: Mapping[str, int]) -> list[Metric]:
    return [
        CounterMetricFamily(f"ai_sidecar_{key}_total", doc, value=stats.get(key, 0))
        for key, doc in _TRACING_COUNTERS
    ]


def _flags_family(states: Mapping[str, Mapping[str, Any]]) -> Metric:
    family = _gauge("ai_sidecar_flag_on", "1 while the feature flag is on, else 0.", "flag")
    for name, state in states.items():
        family.add_metric((str(name),), 1.0 if state.get("on") else 0.0)
    return family
