"""The metrics sink: what a scrape shows after known requests and for known live state."""

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.domain import outcome
from sidecar.domain.outcome import Rejection
from sidecar.telemetry.metrics import ERROR_CODES, Metrics
from sidecar.telemetry.record import RequestRecord

Labels = frozenset[tuple[str, str]]


class Scrape:
    """One parsed exposition: sample values by sample name and labels."""

    def __init__(self, metrics: Metrics) -> None:
        body, self.content_type = metrics.render()
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def label_sets(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for sample, labels in self.samples if sample == name]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(
        known_models=["chat", "premium"],
        known_clusters=["openai-cheap", "openai-premium"],
        known_tiers=["free", "paid"],
    )


def record(**fields: Any) -> RequestRecord:
    """A chat request routed to openai-cheap for a paid tenant, answered 200 in 2 s."""
    request = RequestRecord(started_at_s=10.0, path="/v1/chat/completions", api_family="openai")
    request.model = "chat"
    request.cluster = "openai-cheap"
    request.tier = "paid"
    request.outcome = "routed"
    request.status = 200
    request.first_byte_at_s = 10.3
    request.ended_at_s = 12.0
    for name, value in fields.items():
        setattr(request, name, value)
    return request


REQUEST = {"model": "chat", "cluster": "openai-cheap", "tier": "paid"}
BY_CLUSTER = {"model": "chat", "cluster": "openai-cheap"}


# --- Requests ---------------------------------------------------------------------------------


def test_requests_tokens_and_cost_are_counted(metrics: Metrics) -> None:
    metrics.observe(record(input_tokens=100, output_tokens=20, cost_usd=0.0004))
    metrics.observe(record(input_tokens=50, output_tokens=5, cost_usd=0.0001))
    metrics.observe(record(outcome="cache", cluster=None, status=200, first_byte_at_s=None))

    scrape = Scrape(metrics)
    assert scrape.value("ai_sidecar_requests_total", **REQUEST, outcome="routed") == 2
    assert (
        scrape.value(
            "ai_sidecar_requests_total", model="chat", cluster="none", tier="paid", outcome="cache"
        )
        == 1
    )
    assert scrape.value("ai_sidecar_tokens_total", **REQUEST, direction="input") == 150
    assert scrape.value("ai_sidecar_tokens_total", **REQUEST, direction="output") == 25
    assert scrape.value("ai_sidecar_cost_usd_total", **REQUEST) == pytest.approx(0.0005)
    assert scrape.value("ai_sidecar_request_cost_usd_count", **BY_CLUSTER) == 2
    assert scrape.value("ai_sidecar_request_cost_usd_bucket", **BY_CLUSTER, le="0.00025") == 1
    assert scrape.value("ai_sidecar_request_duration_seconds_count", **REQUEST) == 2
    assert scrape.value("ai_sidecar_request_duration_seconds_sum", **REQUEST) == 4.0
    assert scrape.value("ai_sidecar_request_duration_seconds_bucket", **REQUEST, le="1.5") == 0
    assert scrape.value("ai_sidecar_request_duration_seconds_bucket", **REQUEST, le="2.0") == 2
    assert scrape.value("ai_sidecar_time_to_first_token_seconds_count", **BY_CLUSTER) == 2
    assert (
        scrape.value("ai_sidecar_time_to_first_token_seconds_bucket", **BY_CLUSTER, le="0.5") == 2
    )
    assert scrape.value("ai_sidecar_errors_total", **BY_CLUSTER, kind="upstream_5xx") is None


def test_missing_or_impossible_amounts_are_not_counted(metrics: Metrics) -> None:
    metrics.observe(record(ended_at_s=None, input_tokens=None, cost_usd=float("nan")))
    metrics.observe(record(output_tokens=-3, cost_usd=-1.0))

    scrape = Scrape(metrics)
    assert scrape.value("ai_sidecar_requests_total", **REQUEST, outcome="routed") == 2
    assert scrape.value("ai_sidecar_request_duration_seconds_count", **REQUEST) == 1
    assert scrape.value("ai_sidecar_tokens_total", **REQUEST, direction="input") is None
    assert scrape.value("ai_sidecar_tokens_total", **REQUEST, direction="output") is None
    assert scrape.value("ai_sidecar_cost_usd_total", **REQUEST) is None
    assert scrape.value("ai_sidecar_request_cost_usd_count", **BY_CLUSTER) is None


@pytest.mark.parametrize(
    ("outcome", "code", "status", "kind"),
    [
        ("rejected", "model_not_found", 404, "model_not_found"),
        ("error", "sidecar_internal_error", 500, "sidecar_internal_error"),
        ("error", None, 502, "upstream_5xx"),
        ("rejected", "something_new", 400, "other"),
        ("routed", None, 503, "upstream_5xx"),
        ("routed", None, 429, "upstream_429"),
        ("routed", None, 404, "upstream_4xx"),
    ],
)
def test_errors_are_counted_by_kind(
    metrics: Metrics, outcome: str, code: str | None, status: int, kind: str
) -> None:
    metrics.observe(record(outcome=outcome, error_code=code, status=status))

    scrape = Scrape(metrics)
    assert scrape.label_sets("ai_sidecar_errors_total") == [{**BY_CLUSTER, "kind": kind}]


def test_a_shed_request_is_counted_by_pool_and_tier(metrics: Metrics) -> None:
    shed = record(
        outcome="shed",
        error_code="overloaded",
        status=503,
        cluster=None,
        pool="free-pool",
        tier="free",
    )
    shed.first_byte_at_s = None

    metrics.observe(shed)

    scrape = Scrape(metrics)
    assert scrape.value("ai_sidecar_shed_total", pool="free-pool", tier="free") == 1
    assert (
        scrape.value("ai_sidecar_errors_total", model="chat", cluster="none", kind="overloaded")
        == 1
    )


def test_a_fallback_is_counted_for_the_cluster_that_served(metrics: Metrics) -> None:
    metrics.observe(record(fallback_depth=1, rung="fallback", cluster="openai-premium"))
    metrics.observe(record(fallback_depth=0, rung="primary"))

    scrape = Scrape(metrics)
    assert scrape.label_sets("ai_sidecar_fallbacks_total") == [
        {"model": "chat", "cluster": "openai-premium"}
    ]


def test_label_values_outside_the_known_sets_are_bounded(metrics: Metrics) -> None:
    for number in range(50):
        metrics.observe(
            record(model=f"client-model-{number}", cluster=f"c{number}", tier=None, outcome="odd")
        )

    scrape = Scrape(metrics)
    assert scrape.label_sets("ai_sidecar_requests_total") == [
        {"model": "unknown", "cluster": "unknown", "tier": "none", "outcome": "other"}
    ]
    assert (
        scrape.value(
            "ai_sidecar_requests_total",
            model="unknown",
            cluster="unknown",
            tier="none",
            outcome="other",
        )
        == 50
    )


def test_every_rejection_code_is_a_known_error_kind() -> None:
    codes = {rejection.code for rejection in _every_rejection()}

    assert codes
    assert codes <= ERROR_CODES


def _every_rejection() -> list[Rejection]:
    """Every Rejection the domain's factories make, with 429 and 503 for any int argument."""
    factories = [
        function
        for function in vars(outcome).values()
        if inspect.isfunction(function)
        and inspect.signature(function).return_annotation is Rejection
    ]
    return [factory(*_arguments(factory, status)) for factory in factories for status in (429, 503)]


def _arguments(factory: Callable[..., Rejection], status: int) -> list[object]:
    parameters = inspect.signature(factory).parameters.values()
    return [status if parameter.annotation is int else "x" for parameter in parameters]


# --- Breakers and live state ------------------------------------------------------------------


def test_breaker_transitions_are_counted(metrics: Metrics) -> None:
    metrics.breaker_transition("openai-premium", "closed", "open")
    metrics.breaker_transition("openai-premium", "open", "half_open")
    metrics.breaker_transition("who-knows", "open", "melted")

    scrape = Scrape(metrics)
    name = "ai_sidecar_breaker_transitions_total"
    assert scrape.value(name, cluster="openai-premium", from_state="closed", to_state="open") == 1
    assert (
        scrape.value(name, cluster="openai-premium", from_state="open", to_state="half_open") == 1
    )
    assert scrape.value(name, cluster="unknown", from_state="open", to_state="other") == 1


def test_gauges_are_read_from_the_snapshot_at_scrape_time(metrics: Metrics) -> None:
    state: dict[str, Any] = {
        "clusters": {
            "openai-cheap": {"breaker": "closed", "in_flight": 3, "reason": "ok"},
            "openai-premium": {"breaker": "half_open", "in_flight": 0},
            "enterprise-dedicated": {"breaker": "open", "in_flight": 1},
        },
        "pools": {"paid": {"in_use": 4, "max_concurrent": 10, "waiting": 2, "shed": 7}},
        "recent_transitions": [],
    }
    metrics.set_live_state(lambda: state)
    metrics.set_stream_count(lambda: 5)

    first = Scrape(metrics)
    state["pools"]["paid"]["in_use"] = 9
    second = Scrape(metrics)

    assert first.value("ai_sidecar_breaker_state", cluster="openai-cheap") == 0
    assert first.value("ai_sidecar_breaker_state", cluster="openai-premium") == 1
    assert first.value("ai_sidecar_breaker_state", cluster="enterprise-dedicated") == 2
    assert first.value("ai_sidecar_cluster_in_flight", cluster="openai-cheap") == 3
    assert first.value("ai_sidecar_pool_in_use", pool="paid") == 4
    assert first.value("ai_sidecar_pool_capacity", pool="paid") == 10
    assert first.value("ai_sidecar_pool_waiting", pool="paid") == 2
    assert first.value("ai_sidecar_streams_active") == 5
    assert second.value("ai_sidecar_pool_in_use", pool="paid") == 9


def test_tracing_stats_are_exposed_as_counters(metrics: Metrics) -> None:
    stats = {"spans_started": 9, "spans_exported": 7, "spans_export_failed": 1, "spans_dropped": 1}
    metrics.set_tracing_stats(lambda: stats)

    scrape = Scrape(metrics)

    assert scrape.value("ai_sidecar_spans_exported_total") == 7
    assert scrape.value("ai_sidecar_spans_export_failed_total") == 1
    assert scrape.value("ai_sidecar_spans_dropped_total") == 1


def test_a_failing_source_leaves_the_rest_of_the_scrape(metrics: Metrics) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("state unavailable")

    metrics.set_live_state(broken)
    metrics.set_stream_count(lambda: 2)
    metrics.observe(record())

    scrape = Scrape(metrics)

    assert scrape.value("ai_sidecar_streams_active") == 2
    assert scrape.value("ai_sidecar_requests_total", **REQUEST, outcome="routed") == 1
    assert scrape.label_sets("ai_sidecar_pool_in_use") == []


def test_nothing_live_is_exposed_before_its_source_is_set(metrics: Metrics) -> None:
    scrape = Scrape(metrics)

    assert scrape.value("ai_sidecar_streams_active") is None
    assert scrape.value("ai_sidecar_spans_dropped_total") is None
    assert scrape.content_type.startswith("text/plain")


def test_registries_are_private() -> None:
    first = Metrics(["chat"], ["c"], ["free"])
    second = Metrics(["chat"], ["c"], ["free"])

    first.observe(record(cluster="c", tier="free"))

    assert Scrape(second).label_sets("ai_sidecar_requests_total") == []


def test_spend_budget_events_and_the_cost_cache_are_counted() -> None:
    metrics = Metrics(
        ["chat"],
        ["openai-cheap"],
        ["paid"],
        known_tenants=["acme"],
        known_teams=["data"],
        known_budgets=["daily"],
    )
    spent = record(tenant="acme", team="data", input_tokens=10, output_tokens=5, cost_usd=0.25)
    spent.budget_events = [("daily", "soft_limit"), ("daily", "downgraded"), ("gone", "exhausted")]
    metrics.observe(spent)
    metrics.observe(
        record(tenant="intruder", cost_cache="hit", saved_usd=0.5, outcome="cost_cache")
    )
    metrics.observe(record(tenant="acme", team="data", cost_cache="miss"))
    scrape = Scrape(metrics)
    assert scrape.value("ai_sidecar_tenant_spend_usd_total", tenant="acme", team="data") == 0.25
    assert scrape.value("ai_sidecar_tenant_tokens_total", tenant="acme", team="data") == 15
    assert scrape.value("ai_sidecar_budget_events_total", budget="daily", event="soft_limit") == 1
    assert scrape.value("ai_sidecar_budget_events_total", budget="unknown", event="exhausted") == 1
    assert scrape.value("ai_sidecar_cost_cache_requests_total", model="chat", result="hit") == 1
    assert scrape.value("ai_sidecar_cost_cache_requests_total", model="chat", result="miss") == 1
    assert scrape.value("ai_sidecar_cost_cache_saved_usd_total", model="chat") == 0.5
    route = {"model": "chat", "cluster": "openai-cheap", "tier": "paid"}
    assert scrape.value("ai_sidecar_requests_total", **route, outcome="cost_cache") == 1


def test_the_store_state_is_read_at_scrape_time(metrics: Metrics) -> None:
    state = {"breaker": "closed", "local_operations": 0, "pending_settles": 0, "pending_keys": 0}
    metrics.accounting.set_store_stats(lambda: state)
    assert Scrape(metrics).value("ai_sidecar_store_shared") == 1
    state.update(breaker="open", local_operations=7, pending_settles=2, pending_keys=3)
    scrape = Scrape(metrics)
    assert scrape.value("ai_sidecar_store_shared") == 0
    assert scrape.value("ai_sidecar_store_local_operations_total") == 7
    assert scrape.value("ai_sidecar_store_pending") == 5
