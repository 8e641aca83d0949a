"""Cross-checking a policy against the Envoy configuration that will carry it.

Catches the mistakes that otherwise show only under traffic: a policy cluster Envoy
does not define (requests to it would fail with 503), no route reading the routing
header, a routing header that clients could set themselves because Envoy does not
strip it before routing, and failover chains Envoy cannot walk: a missing or wrong
aggregate cluster for a chain suffix, one without the upstream filter or the retry
budget, or a model cluster whose endpoints do not name it (``ai.sidecar/hop``).
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from sidecar.core.chains import AGGREGATE_PREFIX, aggregate_name, chain_suffixes
from sidecar.domain.canary import CANARY
from sidecar.domain.ids import ClusterName
from sidecar.domain.policy import Policy
from sidecar.policy.problems import Problem

_REGENERATE = "generate it with: python -m sidecar envoy-chains --policy POLICY"


def check_envoy_config(policy: Policy, envoy_config: Path) -> list[Problem]:
    """Problems that would make ``policy`` fail behind the Envoy config at ``envoy_config``."""
    try:
        config = yaml.safe_load(envoy_config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        return [Problem("", f"cannot read Envoy config {envoy_config}: {error}")]
    if not isinstance(config, dict):
        return [Problem("", f"Envoy config {envoy_config} is not a YAML mapping")]
    problems = list(_missing_clusters(policy, config, envoy_config))
    problems += _routing_header_problems(policy, config, envoy_config)
    problems += _failover_problems(policy, config, envoy_config)
    return problems


def _missing_clusters(policy: Policy, config: dict[str, Any], source: Path) -> Iterator[Problem]:
    defined = {cluster.get("name") for cluster in _static(config, "clusters")}
    for name in sorted(policy.clusters):
        if name not in defined:
            yield Problem(f"clusters.{name}", f"no cluster named '{name}' in Envoy config {source}")


def _routing_header_problems(policy: Policy, config: dict[str, Any], source: Path) -> list[Problem]:
    header = policy.cluster_header
    routes = list(_walk_key(config, "cluster_header"))
    problems = []
    if header not in routes:
        problems.append(
            Problem(
                "routing.cluster_header",
                f"no route in Envoy config {source} uses cluster_header '{header}'",
            )
        )
    if header not in _early_removed_headers(config):
        problems.append(
            Problem(
                "routing.cluster_header",
                f"Envoy config {source} does not remove a client-sent '{header}' before "
                "routing (early_header_mutation_extensions); clients could pick the cluster",
            )
        )
    return problems


def _failover_problems(policy: Policy, config: dict[str, Any], source: Path) -> Iterator[Problem]:
    clusters = {cluster.get("name"): cluster for cluster in _static(config, "clusters")}
    for name in sorted(policy.clusters):
        if name.startswith(AGGREGATE_PREFIX):
            yield Problem(
                f"clusters.{name}",
                f"cluster names starting with '{AGGREGATE_PREFIX}' are kept for the "
                "failover aggregates; rename it",
            )
    hops: set[ClusterName] = set()
    seen: set[str] = set()
    for tier_name, tier in sorted(policy.tiers.items()):
        for model, route in sorted(tier.routes.items()):
            if policy.models[model].objective is not None:
                continue  # objective routing sends each request to one cluster
            chains = [route.chain] + ([route.chain_for(CANARY)] if route.canary else [])
            for suffix in (suffix for chain in chains for suffix in chain_suffixes(chain)):
                hops.update(suffix)
                name = aggregate_name(suffix)
                if name in seen:
                    continue
                seen.add(name)
                where = f"tiers.{tier_name}.routes.{model}"
                yield from _aggregate_problems(where, name, suffix, clusters.get(name), source)
    for hop in sorted(hops):
        cluster = clusters.get(hop)
        if cluster is not None and not _endpoints_name_hop(cluster, hop):
            yield Problem(
                f"clusters.{hop}",
                f"the endpoints of Envoy cluster '{hop}' in {source} do not all carry "
                f"metadata {{filter_metadata: {{ai.sidecar: {{hop: {hop}}}}}}}; failover "
                "attempts to it would be refused",
            )


def _aggregate_problems(
    where: str,
    name: str,
    suffix: tuple[ClusterName, ...],
    cluster: dict[str, Any] | None,
    source: Path,
) -> Iterator[Problem]:
    chain = " -> ".join(suffix)
    if cluster is None:
        yield Problem(
            where,
            f"no aggregate cluster '{name}' in Envoy config {source} for the failover "
            f"chain {chain}; {_REGENERATE}",
        )
        return
    listed = [
        value
        for cluster_type in _walk_key(cluster, "cluster_type")
        for value in _walk_key(cluster_type, "clusters")
    ]
    if listed != [list(suffix)]:
        yield Problem(
            where,
            f"Envoy cluster '{name}' in {source} must be an aggregate of exactly {chain} "
            f"(in order); {_REGENERATE}",
        )
    filters = [f.get("name") for fs in _walk_key(cluster, "http_filters") for f in fs or ()]
    if "envoy.filters.http.ext_proc" not in filters:
        yield Problem(
            where,
            f"aggregate cluster '{name}' in {source} has no upstream ext_proc filter: "
            f"attempts would reach the model unrewritten; {_REGENERATE}",
        )
    if not any(_walk_key(cluster, "retry_budget")):
        yield Problem(
            where,
            f"aggregate cluster '{name}' in {source} has no retry_budget, so failover is "
            f"capped by Envoy's default of 3 concurrent retries; {_REGENERATE}",
        )


def _endpoints_name_hop(cluster: dict[str, Any], hop: str) -> bool:
    endpoints = [
        endpoint
        for assignment in _walk_key(cluster, "load_assignment")
        for group in (assignment or {}).get("endpoints") or ()
        for endpoint in (group or {}).get("lb_endpoints") or ()
    ]
    return bool(endpoints) and all(_hop_of(endpoint) == hop for endpoint in endpoints)


def _hop_of(endpoint: Any) -> Any:
    node = endpoint
    for key in ("metadata", "filter_metadata", "ai.sidecar", "hop"):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _early_removed_headers(config: dict[str, Any]) -> set[str]:
    removed: set[str] = set()
    for extensions in _walk_key(config, "early_header_mutation_extensions"):
        for mutation in _walk_key(extensions, "remove"):
            if isinstance(mutation, str):
                removed.add(mutation.lower())
    return removed


def _static(config: dict[str, Any], section: str) -> list[dict[str, Any]]:
    resources = config.get("static_resources") or {}
    items = resources.get(section) or []
    return [item for item in items if isinstance(item, dict)]


def _walk_key(node: Any, key: str) -> Iterator[Any]:
    """Every value stored under ``key`` anywhere in a nested YAML structure."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key:
                yield value
            yield from _walk_key(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_key(item, key)
