"""Failover chains as Envoy sees them: the aggregate clusters a policy needs.

A request that may fail over inside Envoy is sent to an *aggregate* cluster that lists
the rest of its chain in order, from the cluster the sidecar chose: Envoy's retries
then walk down that list. Clusters out before the request starts (breaker open, full)
must be skipped up front, so every *suffix* of every chain with at least two clusters
needs an aggregate of its own; a single cluster is used as it is.

Pure: names and suffixes are functions of the policy.
"""

import hashlib
from collections.abc import Sequence

from sidecar.domain.canary import CANARY
from sidecar.domain.ids import ClusterName
from sidecar.domain.policy import Policy

AGGREGATE_PREFIX = "chain--"
"""Every aggregate's name starts with this. ``check --envoy-config`` reports a policy
cluster whose name does too, as it could clash with an aggregate."""

_SEPARATOR = "--"


def aggregate_name(hops: Sequence[ClusterName]) -> ClusterName:
    """The aggregate cluster for ``hops`` (in order), e.g. ``chain--a--b--c``.

    Deterministic and readable. When a cluster name itself contains ``--`` the joined
    name could be read two ways, so a short digest of the exact list is appended.
    """
    if len(hops) < 2:
        raise ValueError(f"an aggregate needs at least two clusters, got {list(hops)}")
    name = AGGREGATE_PREFIX + _SEPARATOR.join(hops)
    if any(_SEPARATOR in hop for hop in hops):
        digest = hashlib.sha256("\n".join(hops).encode()).hexdigest()[:10]
        name = f"{name}{_SEPARATOR}{digest}"
    return ClusterName(name)


def chain_suffixes(chain: Sequence[ClusterName]) -> list[tuple[ClusterName, ...]]:
    """The suffixes of ``chain`` with at least two clusters, longest first."""
    return [tuple(chain[start:]) for start in range(len(chain) - 1)]


def failover_chains(policy: Policy) -> list[tuple[ClusterName, ...]]:
    """Every chain suffix the policy's routes can send a request down, each once.

    Sorted by aggregate name, so the generated Envoy config is stable.
    """
    suffixes: set[tuple[ClusterName, ...]] = set()
    for tier in policy.tiers.values():
        for model, route in tier.routes.items():
            if policy.models[model].objective is not None:
                continue  # one cluster chosen per request: no failover chain
            suffixes.update(chain_suffixes(route.chain))
            if route.canary is not None:
                suffixes.update(chain_suffixes(route.chain_for(CANARY)))
    return sorted(suffixes, key=aggregate_name)


def envoy_target(chain_rest: Sequence[ClusterName], hops: int) -> ClusterName:
    """The cluster Envoy routes to when ``hops`` clusters of ``chain_rest`` may be tried."""
    if hops < 2:
        return chain_rest[0]
    return aggregate_name(chain_rest)
