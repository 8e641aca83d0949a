"""Failover chains: aggregate names, the suffixes a policy needs, the generated Envoy
clusters, the decision's failover run, and the Envoy cross-check."""

from pathlib import Path

import pytest
import yaml

from sidecar.__main__ import main
from sidecar.core.chains import aggregate_name, chain_suffixes, envoy_target, failover_chains
from sidecar.core.router import ActivePolicy, RouteRequest, route
from sidecar.domain.api import Endpoint
from sidecar.domain.ids import ClusterName, TenantId
from sidecar.domain.outcome import Decision
from sidecar.domain.policy import Policy
from sidecar.policy.envoy_chains import BEGIN_MARKER, END_MARKER, ChainOptions, render_aggregates
from sidecar.policy.envoy_check import check_envoy_config
from tests.conftest import DEMO_POLICY, ENVOY_CONFIG

C = ClusterName
PAID_CHAIN = (C("openai-premium"), C("openai-cheap"), C("ollama-local"))


def test_an_aggregate_is_named_after_its_clusters_in_order() -> None:
    assert aggregate_name(PAID_CHAIN) == "chain--openai-premium--openai-cheap--ollama-local"
    assert aggregate_name(PAID_CHAIN[1:]) == "chain--openai-cheap--ollama-local"


def test_names_that_could_be_read_two_ways_get_a_digest() -> None:
    one = aggregate_name((C("a--b"), C("c")))
    other = aggregate_name((C("a"), C("b--c")))
    assert one != other
    assert one.startswith("chain--a--b--c--")


def test_a_single_cluster_has_no_aggregate() -> None:
    with pytest.raises(ValueError, match="at least two"):
        aggregate_name((C("a"),))
    assert envoy_target((C("a"), C("b")), hops=1) == "a"
    assert envoy_target((C("a"), C("b")), hops=2) == "chain--a--b"


def test_every_suffix_of_two_or_more_clusters_needs_an_aggregate() -> None:
    assert chain_suffixes(PAID_CHAIN) == [PAID_CHAIN, PAID_CHAIN[1:]]
    assert chain_suffixes((C("a"),)) == []


def test_the_demo_policy_needs_seven_aggregates_each_once(demo_policy: Policy) -> None:
    assert [aggregate_name(chain) for chain in failover_chains(demo_policy)] == [
        "chain--enterprise-dedicated--openai-premium",
        "chain--enterprise-dedicated--openai-premium--ollama-local",
        # the paid chat canary, with the route's own chain behind it
        "chain--enterprise-dedicated--openai-premium--openai-cheap--ollama-local",
        "chain--fraud-model--rules-engine",
        "chain--openai-cheap--ollama-local",  # the paid suffix and the free chain share it
        "chain--openai-premium--ollama-local",
        "chain--openai-premium--openai-cheap--ollama-local",
    ]


# -- the decision's failover run --------------------------------------------------------


class Fleet:
    """A fleet view with some breakers open and some clusters full."""

    def __init__(self, open_breakers: set[str] | None = None, full: set[str] | None = None):
        self.open_breakers = open_breakers or set()
        self.full = full or set()

    def breaker_admits(self, cluster: ClusterName, now: float) -> bool:
        return cluster not in self.open_breakers

    def cluster_full(self, cluster: ClusterName) -> bool:
        return cluster in self.full

    def killed_by(self, cluster: ClusterName) -> str | None:
        return None

    def downgraded_by(self, tier: str, model: str) -> str | None:
        return None

    def canary_weight(self, tier: str, model: str) -> float:
        return 0.0

    def latency_p95(self, cluster: str, now: float, min_samples: int = 1) -> float | None:
        return None


def _decide(
    active: ActivePolicy, fleet: Fleet, endpoint: Endpoint = Endpoint.OPENAI_CHAT
) -> Decision:
    paid = active.policy.tenants[TenantId("demo-paid")]
    decision = route(RouteRequest(paid, endpoint, "chat"), active, fleet, 0.0)
    assert isinstance(decision, Decision)
    return decision


@pytest.mark.parametrize(
    ("open_breakers", "full", "cluster", "hops", "target"),
    [
        (set(), set(), "openai-premium", 3, "chain--openai-premium--openai-cheap--ollama-local"),
        ({"openai-premium"}, set(), "openai-cheap", 2, "chain--openai-cheap--ollama-local"),
        # Envoy cannot skip a cluster inside an aggregate: the run stops before it.
        ({"openai-cheap"}, set(), "openai-premium", 1, "openai-premium"),
        (
            set(),
            {"ollama-local"},
            "openai-premium",
            2,
            "chain--openai-premium--openai-cheap--ollama-local",
        ),
        ({"openai-premium", "openai-cheap"}, set(), "ollama-local", 1, "ollama-local"),
    ],
    ids=["all up", "primary open", "middle open", "last full", "only the last"],
)
def test_a_decision_may_fail_over_along_the_unbroken_run_after_its_cluster(
    demo_active: ActivePolicy,
    open_breakers: set[str],
    full: set[str],
    cluster: str,
    hops: int,
    target: str,
) -> None:
    decision = _decide(demo_active, Fleet(open_breakers, full))
    assert decision.cluster == cluster
    assert decision.hops == hops
    assert decision.failover_hops == decision.chain_rest[:hops]
    assert envoy_target(decision.chain_rest, decision.hops) == target


def test_a_cluster_that_cannot_answer_the_api_ends_the_run(demo_active: ActivePolicy) -> None:
    decision = _decide(demo_active, Fleet(), Endpoint.OLLAMA_EMBED)
    assert (decision.cluster, decision.hops) == ("ollama-local", 1)


# -- the generated Envoy clusters --------------------------------------------------------


def test_the_generated_aggregates_are_valid_yaml_with_filter_and_budget(
    demo_policy: Policy,
) -> None:
    text = render_aggregates(failover_chains(demo_policy), "policy.yaml", ChainOptions())
    clusters = yaml.safe_load("clusters:\n" + text)["clusters"]
    assert len(clusters) == len(failover_chains(demo_policy))
    for cluster in clusters:
        hops = cluster["cluster_type"]["typed_config"]["clusters"]
        assert cluster["name"] == aggregate_name(hops)
        budget = cluster["circuit_breakers"]["thresholds"][0]["retry_budget"]
        assert budget == {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 10}
        options = cluster["typed_extension_protocol_options"]
        filters = next(iter(options.values()))["http_filters"]
        assert [f["name"] for f in filters] == [
            "envoy.filters.http.ext_proc",
            "envoy.filters.http.upstream_codec",
        ]
        ext_proc = filters[0]["typed_config"]
        assert ext_proc["failure_mode_allow"] is False
        assert ext_proc["grpc_service"]["initial_metadata"] == [
            {"key": "x-ext-proc-role", "value": "upstream"}
        ]
        assert ext_proc["processing_mode"]["request_header_mode"] == "SEND"


def test_the_envoy_config_holds_exactly_the_generated_aggregates(demo_policy: Policy) -> None:
    config = ENVOY_CONFIG.read_text()
    start = config.index(f"  {BEGIN_MARKER}")
    end = config.index(END_MARKER) + len(END_MARKER) + 1
    expected = render_aggregates(failover_chains(demo_policy), "examples/policy.yaml")
    assert config[start:end] == expected, "regenerate: python -m sidecar envoy-chains"


def test_the_cli_prints_the_aggregates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envoy-chains", "--policy", str(DEMO_POLICY), "--budget-percent", "10"]) == 0
    out = capsys.readouterr().out
    assert "- name: chain--openai-premium--openai-cheap--ollama-local" in out
    assert "budget_percent: {value: 10.0}" in out


# -- the Envoy cross-check ---------------------------------------------------------------


def _problems(tmp_path: Path, policy: Policy, envoy_text: str) -> list[str]:
    config = tmp_path / "envoy.yaml"
    config.write_text(envoy_text)
    return [f"{p.path}: {p.message}" for p in check_envoy_config(policy, config)]


def test_the_demo_envoy_config_has_every_aggregate(demo_policy: Policy, tmp_path: Path) -> None:
    assert _problems(tmp_path, demo_policy, ENVOY_CONFIG.read_text()) == []


def test_a_missing_aggregate_is_reported_for_the_route_needing_it(
    demo_policy: Policy, tmp_path: Path
) -> None:
    text = ENVOY_CONFIG.read_text().replace(
        "- name: chain--openai-cheap--ollama-local\n", "- name: chain--other\n"
    )
    (problem,) = _problems(tmp_path, demo_policy, text)
    assert problem.startswith("tiers.free.routes.chat: no aggregate cluster ")
    assert "'chain--openai-cheap--ollama-local'" in problem
    assert "openai-cheap -> ollama-local" in problem


def test_an_aggregate_listing_other_clusters_is_reported(
    demo_policy: Policy, tmp_path: Path
) -> None:
    text = ENVOY_CONFIG.read_text().replace(
        "clusters: [openai-cheap, ollama-local]", "clusters: [ollama-local, openai-cheap]"
    )
    (problem,) = _problems(tmp_path, demo_policy, text)
    assert "must be an aggregate of exactly openai-cheap -> ollama-local" in problem


def test_an_aggregate_without_filter_or_budget_is_reported(
    demo_policy: Policy, tmp_path: Path
) -> None:
    text = ENVOY_CONFIG.read_text()
    text = text.replace(
        "- name: envoy.filters.http.ext_proc\n          typed_config:",
        "- name: x\n          typed_config:",
    )
    text = text.replace("retry_budget:", "retry_budget_off:")
    problems = _problems(tmp_path, demo_policy, text)
    aggregates = len(failover_chains(demo_policy))
    assert len(problems) == 2 * aggregates, problems
    assert sum("no upstream ext_proc filter" in p for p in problems) == aggregates
    assert sum("no retry_budget" in p for p in problems) == aggregates


def test_a_model_cluster_whose_endpoints_do_not_name_it_is_reported(
    demo_policy: Policy, tmp_path: Path
) -> None:
    text = ENVOY_CONFIG.read_text().replace("{hop: openai-cheap}", "{hop: openai-premium}")
    (problem,) = _problems(tmp_path, demo_policy, text)
    assert problem.startswith("clusters.openai-cheap: the endpoints of Envoy cluster")
