"""The routing core: tenant identification and the tier route, table-driven."""

from dataclasses import dataclass

import pytest

from sidecar.core.fleet import Fleet
from sidecar.core.identity import PresentedIdentity, identify
from sidecar.core.router import ActivePolicy, RouteRequest, route
from sidecar.domain.api import Endpoint
from sidecar.domain.ids import ClusterName, ModelName, TenantId, TierName
from sidecar.domain.objective import TaskFacts
from sidecar.domain.outcome import Decision, Rejection
from sidecar.domain.policy import Policy, TenantSpec
from sidecar.domain.secret import Secret


@dataclass(frozen=True)
class IdentityCase:
    why: str
    header: str | None
    claims: dict[str, object] | None
    expected: str  # a tenant id, or "401:<code>"
    token_failure: str | None = None


IDENTITY_CASES = [
    IdentityCase("a listed key names its tenant", "Bearer sk-demo-free", None, "demo-free"),
    IdentityCase("the scheme is case-insensitive", "bearer sk-demo-paid", None, "demo-paid"),
    IdentityCase(
        "spaces around the key do not matter", "Bearer   sk-demo-paid ", None, "demo-paid"
    ),
    IdentityCase("no header at all", None, None, "401:missing_api_key"),
    IdentityCase("a header without the scheme", "sk-demo-free", None, "401:missing_api_key"),
    IdentityCase("the scheme with no key", "Bearer ", None, "401:missing_api_key"),
    IdentityCase("an unknown key", "Bearer sk-nobody", None, "401:invalid_api_key"),
    IdentityCase(
        "a key differing only in case is another key",
        "Bearer SK-DEMO-FREE",
        None,
        "401:invalid_api_key",
    ),
    IdentityCase(
        "a verified claim names the tenant, even one with no keys",
        None,
        {"tenant": "demo-sso"},
        "demo-sso",
    ),
    IdentityCase(
        "a verified claim wins over a key in the header",
        "Bearer sk-demo-free",
        {"tenant": "demo-enterprise"},
        "demo-enterprise",
    ),
    IdentityCase(
        "a verified token for an unknown tenant is refused, not downgraded to the key",
        "Bearer sk-demo-free",
        {"tenant": "mallory"},
        "401:unknown_tenant",
    ),
    IdentityCase(
        "a claim of the wrong type names no tenant",
        None,
        {"tenant": ["demo-free"]},
        "401:unknown_tenant",
    ),
    IdentityCase("a token without the claim", None, {"sub": "x"}, "401:unknown_tenant"),
    IdentityCase(
        "a JWT Envoy refused is reported as such, not as a wrong key",
        "Bearer aaa.bbb.ccc",
        None,
        "401:invalid_token",
        token_failure="Jwt is expired",
    ),
    IdentityCase(
        "an API key is judged as a key even when Envoy noted 'not a JWT'",
        "Bearer sk-demo-free",
        None,
        "demo-free",
        token_failure="Jwt is not in the form of Header.Payload.Signature",
    ),
]


@pytest.mark.parametrize("case", IDENTITY_CASES, ids=lambda case: case.why)
def test_identify(case: IdentityCase, demo_policy: Policy) -> None:
    outcome = identify(PresentedIdentity(case.header, case.claims, case.token_failure), demo_policy)
    if isinstance(outcome, Rejection):
        assert f"{outcome.status}:{outcome.code}" == case.expected
        assert "sk-" not in outcome.message, "a rejection must never echo a key"
    else:
        assert outcome.tenant_id == case.expected


@dataclass(frozen=True)
class RouteCase:
    why: str
    tenant: str
    endpoint: Endpoint
    model: str
    expected: str  # "<cluster>/<upstream model>" or "<status>:<code>"


ROUTE_CASES = [
    RouteCase(
        "free tier chat goes to the cheap model",
        "demo-free",
        Endpoint.OPENAI_CHAT,
        "chat",
        "openai-cheap/gpt-4o-mini",
    ),
    RouteCase(
        "paid tier chat goes to the better model",
        "demo-paid",
        Endpoint.OPENAI_CHAT,
        "chat",
        "openai-premium/gpt-4o",
    ),
    RouteCase(
        "enterprise chat goes to its dedicated deployment",
        "demo-enterprise",
        Endpoint.OPENAI_CHAT,
        "chat",
        "enterprise-dedicated/gpt-4o-enterprise",
    ),
    RouteCase(
        "the free tier has no route to premium",
        "demo-free",
        Endpoint.OPENAI_CHAT,
        "premium",
        "403:model_not_allowed",
    ),
    RouteCase(
        "a model the policy does not define",
        "demo-paid",
        Endpoint.OPENAI_CHAT,
        "gpt-5-turbo",
        "404:model_not_found",
    ),
    RouteCase(
        "model names are case-sensitive",
        "demo-paid",
        Endpoint.OPENAI_CHAT,
        "Chat",
        "404:model_not_found",
    ),
    RouteCase(
        "Ollama's own API reaches an Ollama cluster",
        "demo-free",
        Endpoint.OLLAMA_GENERATE,
        "local",
        "ollama-local/llama3.2",
    ),
    RouteCase(
        "Ollama also serves the OpenAI API",
        "demo-free",
        Endpoint.OPENAI_CHAT,
        "local",
        "ollama-local/llama3.2",
    ),
    RouteCase(
        "an OpenAI-style cluster answers Ollama's chat API, translated",
        "demo-free",
        Endpoint.OLLAMA_CHAT,
        "chat",
        "openai-cheap/gpt-4o-mini",
    ),
    RouteCase(
        "a chain skips a cluster that cannot answer the API even translated",
        "demo-free",
        Endpoint.OLLAMA_EMBED,
        "chat",
        "ollama-local/llama3.2",
    ),
    RouteCase(
        "a chain with no cluster able to answer the API is a client error",
        "demo-paid",
        Endpoint.OLLAMA_EMBED,
        "premium",
        "400:unsupported_endpoint",
    ),
]


@pytest.mark.parametrize("case", ROUTE_CASES, ids=lambda case: case.why)
def test_route(case: RouteCase, demo_active: ActivePolicy) -> None:
    tenant = demo_active.policy.tenants[TenantId(case.tenant)]
    outcome = route(
        RouteRequest(tenant, case.endpoint, case.model), demo_active, Fleet(demo_active.policy), 0.0
    )
    if isinstance(outcome, Rejection):
        assert f"{outcome.status}:{outcome.code}" == case.expected
    else:
        assert f"{outcome.cluster}/{outcome.upstream_model}" == case.expected
        assert outcome.requested_model == case.model
        assert outcome.tier == tenant.tier


def fleet(active: ActivePolicy) -> Fleet:
    return Fleet(active.policy)


def test_decision_carries_the_clusters_credential(demo_active: ActivePolicy) -> None:
    paid = demo_active.policy.tenants[TenantId("demo-paid")]
    decision = route(
        RouteRequest(paid, Endpoint.OPENAI_CHAT, "chat"), demo_active, fleet(demo_active), 0.0
    )
    assert isinstance(decision, Decision)
    assert decision.credential == Secret("sk-upstream-openai-demo")


def test_a_cluster_without_credential_env_gets_none(demo_active: ActivePolicy) -> None:
    free = demo_active.policy.tenants[TenantId("demo-free")]
    decision = route(
        RouteRequest(free, Endpoint.OLLAMA_CHAT, "local"), demo_active, fleet(demo_active), 0.0
    )
    assert isinstance(decision, Decision)
    assert decision.credential is None


def test_a_tier_missing_from_routes_rejects_rather_than_raising(demo_active: ActivePolicy) -> None:
    stranger = TenantSpec(TenantId("ghost"), TierName("no-such-tier"))
    outcome = route(
        RouteRequest(stranger, Endpoint.OPENAI_CHAT, "chat"), demo_active, fleet(demo_active), 0.0
    )
    assert isinstance(outcome, Rejection)
    assert outcome.status == 403


def test_secrets_never_print_themselves() -> None:
    secret = Secret("sk-live-123")
    assert "sk-live" not in repr(secret)
    assert "sk-live" not in f"{secret}"
    assert secret.reveal() == "sk-live-123"


def test_a_downgrade_passes_over_the_primary_and_says_why(demo_active: ActivePolicy) -> None:
    paid = demo_active.policy.tenants[TenantId("demo-paid")]
    why = "budget 'payments-monthly' is spent"
    decision = route(
        RouteRequest(paid, Endpoint.OPENAI_CHAT, "chat", downgrade_reason=why),
        demo_active,
        fleet(demo_active),
        0.0,
    )
    assert isinstance(decision, Decision)
    assert decision.cluster == "openai-cheap"
    assert decision.rung == "fallback"
    assert decision.skipped == (("openai-premium", why),)
    assert decision.chain_rest == ("openai-cheap", "ollama-local")


def test_a_downgrade_of_a_one_cluster_route_keeps_the_cluster(demo_active: ActivePolicy) -> None:
    paid = demo_active.policy.tenants[TenantId("demo-paid")]
    decision = route(
        RouteRequest(paid, Endpoint.OPENAI_CHAT, "premium", downgrade_reason="soft limit"),
        demo_active,
        fleet(demo_active),
        0.0,
    )
    assert isinstance(decision, Decision)
    assert decision.cluster == "openai-premium"


def test_a_downgraded_canary_request_walks_the_routes_own_chain(
    demo_active: ActivePolicy,
) -> None:
    paid = demo_active.policy.tenants[TenantId("demo-paid")]
    fleet_ = fleet(demo_active)
    fleet_.canaries.set_weight((TierName("paid"), ModelName("chat")), 100, "test")
    canary = route(RouteRequest(paid, Endpoint.OPENAI_CHAT, "chat"), demo_active, fleet_, 0.0)
    assert isinstance(canary, Decision)
    assert (canary.cluster, canary.variant) == ("enterprise-dedicated", "canary")
    downgraded = route(
        RouteRequest(paid, Endpoint.OPENAI_CHAT, "chat", downgrade_reason="budget"),
        demo_active,
        fleet_,
        0.0,
    )
    assert isinstance(downgraded, Decision)
    assert downgraded.cluster == "openai-cheap"
    assert downgraded.skipped == (("openai-premium", "budget"),)


def test_a_passed_over_request_for_an_endpoint_no_cluster_serves_is_still_refused(
    demo_active: ActivePolicy,
) -> None:
    paid = demo_active.policy.tenants[TenantId("demo-paid")]
    outcome = route(
        RouteRequest(paid, Endpoint.OPENAI_CHAT, "fraud-score", downgrade_reason="flag"),
        demo_active,
        fleet(demo_active),
        0.0,
    )
    assert isinstance(outcome, Rejection)
    assert outcome.code == "unsupported_endpoint"


def test_an_objective_route_judges_latency_only_after_enough_samples(
    demo_active: ActivePolicy,
) -> None:
    paid = demo_active.policy.tenants[TenantId("demo-paid")]
    fleet_ = fleet(demo_active)
    facts = TaskFacts("general", frozenset({"chat"}), 100, 100)
    request = RouteRequest(paid, Endpoint.OPENAI_CHAT, "assistant", task=facts)
    fleet_.latency.observe(ClusterName("openai-premium"), 3.0, 3.0, now=1.0)
    first = route(request, demo_active, fleet_, 2.0)
    assert isinstance(first, Decision)
    assert first.cluster == "openai-premium", "one slow call is not enough to judge"
    for _ in range(9):
        fleet_.latency.observe(ClusterName("openai-premium"), 3.0, 3.0, now=1.0)
    judged = route(request, demo_active, fleet_, 2.0)
    assert isinstance(judged, Decision)
    assert (judged.cluster, judged.objective_met) == ("enterprise-dedicated", True)
    fleet_.flags.set("degraded-mode", True, "oncall", "spend less", now=3.0)
    downgraded = route(request, demo_active, fleet_, 3.0)
    assert isinstance(downgraded, Decision)
    assert (downgraded.cluster, downgraded.rung) == ("openai-cheap", "fallback")
