"""Prometheus metrics of counting: spend by tenant and team, budgets, the cost cache, the store.

Part of :class:`~sidecar.telemetry.metrics.Metrics` (same registry, same rules for
labels): tenants, teams, budgets and models are bounded by the policy's names (else
``unknown``). The store's counters are read at scrape time from the callable given to
:meth:`AccountingMetrics.set_store_stats` (``GuardedStore.snapshot`` for a shared
store).
"""

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.telemetry.record import UNKNOWN, RequestRecord

_LOGGER = logging.getLogger(__name__)

NONE: Final = "none"
BUDGET_EVENTS: Final = frozenset({"soft_limit", "exhausted", "downgraded"})

_STORE_COUNTERS: Final = (
    ("local_operations", "Store calls served by local counting (the shared store was out)."),
    ("shared_failures", "Shared store calls that failed or timed out."),
    ("reconciled", "Locally counted operations written to the shared store afterwards."),
    ("dropped", "Locally counted operations lost: the backlog for the shared store was full."),
)


class AccountingMetrics:
    """Counters of spend, budget events and the cost cache, and the store's gauges."""

    def __init__(
        self,
        registry: CollectorRegistry,
        known_models: Iterable[str],
        known_tenants: Iterable[str],
        known_teams: Iterable[str],
        known_budgets: Iterable[str],
    ) -> None:
        self._models = frozenset(known_models)
        self._tenants = frozenset(known_tenants)
        self._teams = frozenset(known_teams)
        self._budgets = frozenset(known_budgets)
        self._spend = Counter(
            "ai_sidecar_tenant_spend_usd_total",
            "Spend in US dollars at the policy's prices, by tenant and team.",
            ("tenant", "team"),
            registry=registry,
        )
        self._tenant_tokens = Counter(
            "ai_sidecar_tenant_tokens_total",
            "Tokens (input plus output) the upstreams reported, by tenant and team.",
            ("tenant", "team"),
            registry=registry,
        )
        self._budget_events = Counter(
            "ai_sidecar_budget_events_total",
            "Budget events: soft_limit (crossed), exhausted (a request found it spent), "
            "downgraded (non-critical work moved to cheaper clusters).",
            ("budget", "event"),
            registry=registry,
        )
        self._cache_requests = Counter(
            "ai_sidecar_cost_cache_requests_total",
            "Requests the cost cache was asked to answer, by result (hit, miss).",
            ("model", "result"),
            registry=registry,
        )
        self._cache_saved = Counter(
            "ai_sidecar_cost_cache_saved_usd_total",
            "What the answers the cost cache served had cost when a model wrote them.",
            ("model",),
            registry=registry,
        )
        self._store = _StoreCollector()
        registry.register(self._store)

    def learn(
        self,
        models: Iterable[str],
        tenants: Iterable[str],
        teams: Iterable[str],
        budgets: Iterable[str],
    ) -> None:
        """Take a (new) policy's names as the label values to keep."""
        self._models = frozenset(models)
        self._tenants = frozenset(tenants)
        self._teams = frozenset(teams)
        self._budgets = frozenset(budgets)

    def observe(self, record: RequestRecord) -> None:
        """Count a finished request's spend, budget events and cost cache result."""
        tenant = _bounded(record.tenant, self._tenants)
        team = _bounded(record.team, self._teams)
        if record.cost_usd is not None and record.cost_usd >= 0:
            self._spend.labels(tenant, team).inc(record.cost_usd)
        tokens = (record.input_tokens or 0) + (record.output_tokens or 0)
        if tokens > 0:
            self._tenant_tokens.labels(tenant, team).inc(tokens)
        for budget, event in record.budget_events:
            if event in BUDGET_EVENTS:
                self._budget_events.labels(_bounded(budget, self._budgets), event).inc()
        if record.cost_cache is not None:
            model = _bounded(record.model, self._models)
            self._cache_requests.labels(model, record.cost_cache).inc()
            if record.saved_usd is not None and record.saved_usd > 0:
                self._cache_saved.labels(model).inc(record.saved_usd)

    def set_store_stats(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        """Read the shared store's state and counters from ``stats()`` at each scrape."""
        self._store.stats = stats


def _bounded(value: str | None, known: frozenset[str]) -> str:
    if value is None:
        return NONE
    return value if value in known else UNKNOWN


class _StoreCollector(Collector):
    """``ai_sidecar_store_*``: whether counts are shared now, and the fallback's counters."""

    def __init__(self) -> None:
        self.stats: Callable[[], Mapping[str, Any]] | None = None

    def describe(self) -> Iterable[Metric]:
        return _store_families({})

    def collect(self) -> Iterable[Metric]:
        if self.stats is None:
            return []
        try:
            return _store_families(self.stats())
        except Exception:
            _LOGGER.warning("metrics: cannot read the store's state", exc_info=True)
            return []


def _store_families(stats: Mapping[str, Any]) -> list[Metric]:
    shared = GaugeMetricFamily(
        "ai_sidecar_store_shared",
        "1 while budgets are counted in the shared store, 0 while counted locally.",
        value=1.0 if stats.get("breaker", "closed") == "closed" else 0.0,
    )
    pending = GaugeMetricFamily(
        "ai_sidecar_store_pending",
        "Locally counted operations waiting to be written to the shared store.",
        value=float(stats.get("pending_settles", 0)) + float(stats.get("pending_keys", 0)),
    )
    counters = [
        CounterMetricFamily(f"ai_sidecar_store_{key}_total", doc, value=stats.get(key, 0))
        for key, doc in _STORE_COUNTERS
    ]
    return [shared, pending, *counters]
