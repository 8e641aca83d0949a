"""The routing decision: which cluster serves a request, from the tenant's tier.

``route`` is a pure function of the request facts and the active policy. It returns a
:class:`Decision` or a :class:`Rejection`; it never raises for bad requests.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.domain.api import Endpoint
from sidecar.domain.ids import ClusterName, ModelName
from sidecar.domain.outcome import (
    Decision,
    Rejection,
    endpoint_not_served,
    model_not_in_tier,
    unknown_model,
)
from sidecar.domain.policy import Policy, TenantSpec
from sidecar.domain.secret import Secret


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    """The policy being served, with the provider credentials its clusters need.

    One value is swapped in whole when the policy changes; a request keeps the one it
    started with.
    """

    policy: Policy
    credentials: Mapping[ClusterName, Secret]


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """The facts about a request that routing depends on."""

    tenant: TenantSpec
    endpoint: Endpoint
    requested_model: str


def route(request: RouteRequest, active: ActivePolicy) -> Decision | Rejection:
    """Choose the cluster for ``request``: the tenant's tier route for its model.

    Rejections, in the order checked: a model the policy does not define (404), a
    model the tier has no route for (403), and a cluster whose servers do not speak
    the API the client called (400).
    """
    policy = active.policy
    model = ModelName(request.requested_model)
    if model not in policy.models:
        return unknown_model(request.requested_model)
    tier = request.tenant.tier
    cluster_name = policy.routes.get(tier, {}).get(model)
    if cluster_name is None:
        return model_not_in_tier(model, tier)
    cluster = policy.clusters[cluster_name]
    if not cluster.provider.serves(request.endpoint.family):
        return endpoint_not_served(model, request.endpoint.path)
    return Decision(
        tenant=request.tenant.tenant_id,
        tier=tier,
        requested_model=model,
        cluster=cluster_name,
        upstream_model=cluster.upstream_model,
        credential=active.credentials.get(cluster_name),
        reason="tier_route",
    )
