"""The routing decision: which cluster of the tenant's chain serves a request.

``route`` is a pure function of the request facts, the active policy and a read-only
view of the fleet (breakers, cluster load). It returns a :class:`Decision`, a
:class:`Rejection` (the request itself is wrong or not allowed), or
:class:`Unavailable` (every cluster of the chain is out; the caller turns to the
degradation ladder). It never raises for bad requests.
"""

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from sidecar.core.canary import variant_of
from sidecar.core.objective import pick
from sidecar.core.pipeline import (
    Candidate,
    FleetView,
    PipelineRequest,
    apply_filters,
)
from sidecar.core.pipeline.filters import DEFAULT_FILTERS
from sidecar.domain.api import Endpoint
from sidecar.domain.ids import ClusterName, ModelName, TierName
from sidecar.domain.objective import TaskFacts
from sidecar.domain.outcome import (
    Decision,
    Rejection,
    endpoint_not_served,
    model_not_in_tier,
    no_capable_cluster,
    unknown_model,
)
from sidecar.domain.policy import Policy, RouteSpec, TenantSpec
from sidecar.domain.secret import Secret
from sidecar.providers.translate import can_serve


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    """The policy being served, with the provider credentials its clusters need.

    Immutable: a request keeps the one it started with, whatever happens after.
    """

    policy: Policy
    credentials: Mapping[ClusterName, Secret]


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """The facts about a request that routing depends on.

    ``downgrade_reason`` set: the chain's primary is passed over (a budget is under
    pressure), for that reason, when the chain has a cluster after it. A flag that is
    on may pass it over too (``force_fallback``, ``downgrade_tiers``).
    """

    tenant: TenantSpec
    endpoint: Endpoint
    requested_model: str
    downgrade_reason: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    """Trusted request headers (a canary sticky per user reads its user header)."""
    task: TaskFacts | None = None
    """What an objective-routed request needs and its task family."""


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No cluster of the chain can take the request now, and why each is out."""

    requested_model: ModelName
    skipped: tuple[tuple[ClusterName, str], ...]


def route(
    request: RouteRequest, active: ActivePolicy, fleet: FleetView, now: float
) -> Decision | Rejection | Unavailable:
    """Choose the first cluster of the tenant's chain that no filter excludes.

    The clusters right after it that no filter excludes either may take the request
    if it fails there (``Decision.hops``); the first excluded one ends that run.

    Rejections, in the order checked: a model the policy does not define (404), a
    model the tier has no route for (403), and a chain none of whose clusters speak
    the API the client called (400).
    """
    policy = active.policy
    model = ModelName(request.requested_model)
    if model not in policy.models:
        return unknown_model(request.requested_model)
    tier = policy.tiers.get(request.tenant.tier)
    route_spec = tier.routes.get(model) if tier is not None else None
    if route_spec is None:
        return model_not_in_tier(model, request.tenant.tier)
    downgrade = request.downgrade_reason or _flag_downgrade(fleet, request.tenant.tier, model)
    objective = policy.models[model].objective
    if objective is not None and request.task is not None:
        return _objective_route(request, active, fleet, now, route_spec.chain, downgrade)
    variant = _variant(request, route_spec, fleet, model)
    # A downgraded request walks the route's own chain: the canary is not cheaper.
    chain = route_spec.chain_for(variant) if variant and downgrade is None else route_spec.chain
    candidates = [Candidate(policy.clusters[name], depth) for depth, name in enumerate(chain)]
    passed_over: tuple[tuple[ClusterName, str], ...] = ()
    if downgrade is not None and len(candidates) > 1:
        passed_over = ((candidates[0].cluster.name, downgrade),)
        candidates = candidates[1:]
    filtered = apply_filters(
        candidates, DEFAULT_FILTERS, PipelineRequest(request.endpoint, now), fleet
    )
    if passed_over:
        filtered = replace(filtered, skipped=passed_over + filtered.skipped)
    if not filtered.remaining:
        if not any(can_serve(request.endpoint, policy.clusters[name].provider) for name in chain):
            return endpoint_not_served(model, request.endpoint.path)
        return Unavailable(model, filtered.skipped)
    chosen = filtered.remaining[0]
    return Decision(
        tenant=request.tenant.tenant_id,
        tier=request.tenant.tier,
        requested_model=model,
        cluster=chosen.cluster.name,
        upstream_model=chosen.cluster.upstream_model,
        credential=active.credentials.get(chosen.cluster.name),
        reason=_reason(chosen, filtered.skipped),
        fallback_depth=chosen.depth,
        skipped=filtered.skipped,
        chain_rest=chain[chosen.depth :],
        hops=_usable_run(filtered.remaining),
        variant=variant,
    )


def _objective_route(
    request: RouteRequest,
    active: ActivePolicy,
    fleet: FleetView,
    now: float,
    chain: tuple[ClusterName, ...],
    downgrade: str | None,
) -> Decision | Rejection | Unavailable:
    """One cluster chosen by the objective among those the filters leave (no failover).

    Under a downgrade (a flag or a budget) the cheapest cluster that can take the
    request wins, bar or not: a downgrade is there to spend less.
    """
    assert request.task is not None
    policy = active.policy
    model = ModelName(request.requested_model)
    objective = policy.models[model].objective
    assert objective is not None
    candidates = [Candidate(policy.clusters[name], depth) for depth, name in enumerate(chain)]
    filtered = apply_filters(
        candidates, DEFAULT_FILTERS, PipelineRequest(request.endpoint, now), fleet
    )
    if not filtered.remaining:
        if not any(can_serve(request.endpoint, policy.clusters[name].provider) for name in chain):
            return endpoint_not_served(model, request.endpoint.path)
        return Unavailable(model, filtered.skipped)
    floor = objective.min_latency_samples
    chosen = pick(
        filtered.remaining,
        request.task,
        objective,
        lambda c: fleet.latency_p95(c, now, floor),
        cheapest_only=downgrade is not None,
    )
    if chosen.chosen is None:
        return no_capable_cluster(model, chosen.reason)
    cluster = chosen.chosen.cluster
    return Decision(
        tenant=request.tenant.tenant_id,
        tier=request.tenant.tier,
        requested_model=model,
        cluster=cluster.name,
        upstream_model=cluster.upstream_model,
        credential=active.credentials.get(cluster.name),
        reason=f"{downgrade}: {chosen.reason}" if downgrade else chosen.reason,
        fallback_depth=0 if chosen.met and downgrade is None else 1,
        skipped=filtered.skipped,
        chain_rest=(cluster.name,),
        hops=1,
        objective_met=chosen.met,
    )


def _variant(
    request: RouteRequest, route_spec: RouteSpec, fleet: FleetView, model: ModelName
) -> str | None:
    """The variant of a request on a canary route (None when the route has no canary)."""
    canary = route_spec.canary
    if canary is None:
        return None
    sticky: str = request.tenant.tenant_id
    if canary.sticky_user_header is not None:
        sticky = request.headers.get(canary.sticky_user_header) or sticky
    tier = request.tenant.tier
    return variant_of((tier, model), sticky, fleet.canary_weight(tier, model))


def _flag_downgrade(fleet: FleetView, tier: TierName, model: ModelName) -> str | None:
    flag = fleet.downgraded_by(tier, model)
    return f"passed over by flag '{flag}'" if flag is not None else None


def _usable_run(remaining: tuple[Candidate, ...]) -> int:
    """How many candidates, from the chosen one, follow each other in the chain unbroken.

    Envoy walks an aggregate's clusters in order and cannot skip one, so failover stops
    before the first cluster a filter excluded.
    """
    run = 1
    for before, after in itertools.pairwise(remaining):
        if after.depth != before.depth + 1:
            break
        run += 1
    return run


def _reason(chosen: Candidate, skipped: tuple[tuple[ClusterName, str], ...]) -> str:
    if chosen.depth == 0:
        return "primary"
    why = "; ".join(f"{cluster}: {reason}" for cluster, reason in skipped)
    return f"fallback ({why})"
