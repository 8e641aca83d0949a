"""Cross-checking a policy against the Envoy configuration that will carry it.

Catches the mistakes that otherwise show only under traffic: a policy cluster Envoy
does not define (requests to it would fail with 503), no route reading the routing
header, or a routing header that clients could set themselves because Envoy does not
strip it before routing.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from sidecar.domain.policy import Policy
from sidecar.policy.problems import Problem


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
