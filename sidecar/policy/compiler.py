"""Turning a schema-checked policy message into the immutable :class:`Policy`.

Here the references between sections are resolved (a tenant's tier, a route's
virtual model and cluster) and cross-section rules are checked (one API key, one
tenant). Problems carry the field path; the caller adds the lines.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sidecar.domain.accounting import DEFAULT_ASSUMED_MAX_TOKENS
from sidecar.domain.api import Provider
from sidecar.domain.ids import ClusterName, ModelName, TenantId, TierName
from sidecar.domain.policy import (
    DEFAULT_CLUSTER_HEADER,
    DEFAULT_JWT_NAMESPACE,
    DEFAULT_JWT_PAYLOAD_KEY,
    DEFAULT_MAX_BODY_BYTES,
    AnswerCacheSpec,
    ApiKeySource,
    ClusterSpec,
    DegradedSpec,
    JwtSource,
    ModelSpec,
    Policy,
    Price,
    PriorityBand,
    PriorityRule,
    RouteSpec,
    TenantSpec,
    TierSpec,
)
from sidecar.domain.resilience import BreakerConfig, PoolConfig
from sidecar.policy.accounting_compiler import (
    accounting_problems,
    build_budgets,
    build_cost_cache,
    build_jobs,
    build_rate_limit,
    build_store,
)
from sidecar.policy.flags_compiler import (
    build_canary,
    build_flags,
    build_objective,
    build_profile,
    build_slo,
    canary_problems,
    flag_problems,
    objective_problems,
    slo_problems,
)
from sidecar.policy.yaml_source import FieldPath

_KEY_DIGEST_PREFIX = "sha256:"


@dataclass(frozen=True, slots=True)
class Compiled:
    """The outcome of compiling: a policy, or the problems that prevent one."""

    policy: Policy | None
    problems: tuple[tuple[FieldPath, str], ...]


def compile_policy(message: Any, digest: str) -> Compiled:
    """Resolve references in a parsed ``policy_pb2.Policy`` and build the policy."""
    problems = list(_reference_problems(message)) + list(_key_problems(message))
    if problems:
        return Compiled(None, tuple(problems))
    return Compiled(_build(message, digest), ())


def _reference_problems(message: Any) -> Iterator[tuple[FieldPath, str]]:
    for tenant_id, tenant in message.tenants.items():
        if tenant.tier not in message.tiers:
            yield (("tenants", tenant_id, "tier"), _unknown("tier", tenant.tier, message.tiers))
        if not tenant.api_keys and not message.identity.HasField("jwt"):
            yield (
                ("tenants", tenant_id),
                "tenant has no api_keys and identity.jwt is not configured, "
                "so no request can ever be identified as this tenant",
            )
    for tier_name, tier in message.tiers.items():
        if tier.pool and tier.pool not in message.pools:
            yield (("tiers", tier_name, "pool"), _unknown("pool", tier.pool, message.pools))
        for model_name, route in tier.routes.items():
            yield from _route_problems(message, ("tiers", tier_name, "routes", model_name), route)
            if model_name not in message.models:
                path: FieldPath = ("tiers", tier_name, "routes", model_name)
                yield (path, _unknown("virtual model", model_name, message.models))
    yield from _pool_problems(message)
    yield from _resilience_problems(message)
    yield from _header_problems(message)
    yield from accounting_problems(message)
    yield from flag_problems(message)
    yield from canary_problems(message)
    yield from slo_problems(message)
    yield from objective_problems(message)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _path_problems(message: Any) -> Iterator[tuple[FieldPath, str]]:
    owner: dict[str, str] = {}
    for name, model in sorted(message.models.items()):
        for position, path in enumerate(model.paths):
            where: FieldPath = ("models", name, "paths", position)
            if path in owner:
                yield (where, f"path '{path}' is already bound to model '{owner[path]}'")
            owner.setdefault(path, name)


_RESERVED_HEADERS = frozenset(
    {"authorization", "content-length", "content-type", "host", "cookie", "transfer-encoding"}
)


def _header_problems(message: Any) -> Iterator[tuple[FieldPath, str]]:
    routing_header = message.routing.cluster_header or DEFAULT_CLUSTER_HEADER
    if routing_header in _RESERVED_HEADERS or routing_header.startswith("x-envoy-"):
        yield (
            ("routing", "cluster_header"),
            f"'{routing_header}' is a header with another meaning; use a header of your own",
        )
    key_header = message.identity.api_key.header or "authorization"
    if key_header == routing_header:
        yield (("identity", "api_key", "header"), "must differ from routing.cluster_header")
    scheme = message.identity.api_key.scheme
    if scheme != scheme.strip() or " " in scheme.strip():
        yield (("identity", "api_key", "scheme"), f"'{scheme}' must be one word, like Bearer")


def _route_problems(message: Any, path: FieldPath, route: Any) -> Iterator[tuple[FieldPath, str]]:
    if route.cluster not in message.clusters:
        yield ((*path, "cluster"), _unknown("cluster", route.cluster, message.clusters))
    seen = {route.cluster}
    for position, cluster in enumerate(route.fallback):
        if cluster not in message.clusters:
            yield ((*path, "fallback", position), _unknown("cluster", cluster, message.clusters))
        elif cluster in seen:
            yield ((*path, "fallback", position), f"cluster '{cluster}' is already in the chain")
        seen.add(cluster)


def _pool_problems(message: Any) -> Iterator[tuple[FieldPath, str]]:
    for name, pool in message.pools.items():
        if not pool.overflow:
            continue
        path: FieldPath = ("pools", name, "overflow")
        if pool.overflow == name:
            yield (path, "a pool cannot overflow into itself")
        elif pool.overflow not in message.pools:
            yield (path, _unknown("pool", pool.overflow, message.pools))


def _resilience_problems(message: Any) -> Iterator[tuple[FieldPath, str]]:
    for name, model in message.models.items():
        degraded = model.degraded
        chosen = [bool(degraded.message), degraded.queue, bool(degraded.json)]
        if model.HasField("degraded") and sum(chosen) != 1:
            yield (
                ("models", name, "degraded"),
                "set exactly one of 'message', 'queue' or 'json'",
            )
        if degraded.json and not _is_json(degraded.json):
            yield (("models", name, "degraded", "json"), "is not a JSON document")
    yield from _path_problems(message)
    for position, rule in enumerate(message.priority_rules):
        for index, tenant in enumerate(rule.trusted_tenants):
            if tenant not in message.tenants:
                yield (
                    ("priority_rules", position, "trusted_tenants", index),
                    _unknown("tenant", tenant, message.tenants),
                )
    for name, cluster in message.clusters.items():
        if cluster.provider != "json" and not cluster.model:
            yield (("clusters", name, "model"), f"required for provider '{cluster.provider}'")
    breakers: list[tuple[FieldPath, Any]] = [(("breaker",), message.breaker)]
    breakers += [(("clusters", name, "breaker"), c.breaker) for name, c in message.clusters.items()]
    for path, breaker in breakers:
        if breaker.max_open_wait_s and breaker.open_wait_s > breaker.max_open_wait_s:
            yield (path, "open_wait_s must not exceed max_open_wait_s")


def _key_problems(message: Any) -> Iterator[tuple[FieldPath, str]]:
    holder_of_digest: dict[str, str] = {}
    for tenant_id, tenant in sorted(message.tenants.items()):
        for position, key_digest in enumerate(tenant.api_keys):
            path: FieldPath = ("tenants", tenant_id, "api_keys", position)
            holder = holder_of_digest.setdefault(key_digest, tenant_id)
            if holder != tenant_id:
                yield (path, f"the same API key is already held by tenant '{holder}'")
            elif tenant.api_keys[:position].count(key_digest):
                yield (path, "the same API key is listed twice")


def _unknown(kind: str, name: str, known: Any) -> str:
    names = ", ".join(sorted(known)) or "none defined"
    return f"unknown {kind} '{name}' (known: {names})"


def _build(message: Any, digest: str) -> Policy:
    return Policy(
        digest=digest,
        cluster_header=message.routing.cluster_header or DEFAULT_CLUSTER_HEADER,
        max_body_bytes=message.limits.max_body_bytes or DEFAULT_MAX_BODY_BYTES,
        api_key_source=_api_key_source(message.identity.api_key),
        jwt_source=_jwt_source(message.identity) if message.identity.HasField("jwt") else None,
        clusters=MappingProxyType(
            {
                ClusterName(name): _cluster(name, c, message.breaker)
                for name, c in message.clusters.items()
            }
        ),
        models=MappingProxyType(
            {ModelName(name): _model(name, model) for name, model in message.models.items()}
        ),
        tenants=MappingProxyType(
            {TenantId(tenant_id): _tenant(tenant_id, t) for tenant_id, t in message.tenants.items()}
        ),
        tenant_by_key_digest=MappingProxyType(
            {
                key_digest.removeprefix(_KEY_DIGEST_PREFIX): TenantId(tenant_id)
                for tenant_id, tenant in message.tenants.items()
                for key_digest in tenant.api_keys
            }
        ),
        tiers=MappingProxyType(
            {TierName(name): _tier(name, tier) for name, tier in message.tiers.items()}
        ),
        pools=tuple(_pool(name, pool) for name, pool in sorted(message.pools.items())),
        service_paths=MappingProxyType(
            {path: ModelName(name) for name, m in message.models.items() for path in m.paths}
        ),
        priority_rules=tuple(_priority_rule(rule) for rule in message.priority_rules),
        budgets=build_budgets(message),
        jobs=build_jobs(message),
        store=build_store(message),
        assumed_max_tokens=message.limits.assumed_max_tokens or DEFAULT_ASSUMED_MAX_TOKENS,
        flags=build_flags(message),
        latency_window_s=message.routing.latency_window_s or 300.0,
    )


def _tenant(tenant_id: str, tenant: Any) -> TenantSpec:
    return TenantSpec(
        TenantId(tenant_id),
        TierName(tenant.tier),
        team=tenant.team or None,
        rate_limit=build_rate_limit(tenant),
    )


def _cluster(name: str, cluster: Any, policy_breaker: Any) -> ClusterSpec:
    return ClusterSpec(
        name=ClusterName(name),
        provider=Provider(cluster.provider),
        upstream_model=cluster.model,
        credential_env=cluster.credential_env or None,
        breaker=_breaker(policy_breaker, cluster.breaker),
        max_concurrent=cluster.max_concurrent or None,
        price=(
            Price(cluster.price.input_per_million_usd, cluster.price.output_per_million_usd)
            if cluster.HasField("price")
            else None
        ),
        profile=build_profile(cluster),
    )


def _breaker(policy_wide: Any, own: Any) -> BreakerConfig:
    """Breaker settings: the cluster's own, else the policy's, else the defaults."""
    defaults = BreakerConfig()

    def pick(field: str, default: Any) -> Any:
        for source in (own, policy_wide):
            value = getattr(source, field)
            if value:
                return value
        return default

    return BreakerConfig(
        window_kind=pick("window", defaults.window_kind),
        window_size=pick("window_size", defaults.window_size),
        minimum_calls=pick("minimum_calls", defaults.minimum_calls),
        failure_rate_threshold=pick("failure_rate_percent", 0) / 100
        or defaults.failure_rate_threshold,
        slow_call_rate_threshold=pick("slow_call_rate_percent", 0) / 100
        or defaults.slow_call_rate_threshold,
        slow_call_s=pick("slow_call_s", defaults.slow_call_s),
        open_wait_s=pick("open_wait_s", defaults.open_wait_s),
        max_open_wait_s=pick("max_open_wait_s", defaults.max_open_wait_s),
        wait_multiplier=pick("wait_multiplier", defaults.wait_multiplier),
        half_open_trials=pick("half_open_trials", defaults.half_open_trials),
    )


def _model(name: str, model: Any) -> ModelSpec:
    cache = None
    if model.HasField("answer_cache"):
        spec = model.answer_cache
        cache = AnswerCacheSpec(
            max_entries=spec.max_entries or 1000,
            max_age_s=spec.max_age_s or 3600.0,
            key_fields=tuple(spec.key_fields),
            key_headers=tuple(header.lower() for header in spec.key_headers),
            shared=spec.shared,
        )
    degraded = None
    if model.HasField("degraded"):
        spec = model.degraded
        degraded = DegradedSpec(
            message=spec.message or None,
            queue_max=(spec.queue_max or 1000) if spec.queue else None,
            json=spec.json.encode("utf-8") if spec.json else None,
        )
    return ModelSpec(
        ModelName(name),
        cache,
        degraded,
        tuple(model.paths),
        build_cost_cache(model),
        build_slo(model),
        build_objective(model),
    )


def _tier(name: str, tier: Any) -> TierSpec:
    routes = {
        ModelName(model): RouteSpec(
            (ClusterName(route.cluster), *(ClusterName(c) for c in route.fallback)),
            route.non_critical,
            build_canary(route),
        )
        for model, route in tier.routes.items()
    }
    return TierSpec(
        TierName(name),
        MappingProxyType(routes),
        tier.pool or None,
        tier.priority,
        build_rate_limit(tier),
    )


def _pool(name: str, pool: Any) -> PoolConfig:
    return PoolConfig(
        name=name,
        max_concurrent=pool.max_concurrent,
        max_waiting=pool.max_waiting,
        max_wait_s=pool.max_wait_s,
        min_wait_priority=pool.min_wait_priority,
        per_tenant_max=pool.per_tenant_max or None,
        overflow=pool.overflow or None,
        overflow_min_priority=pool.overflow_min_priority,
        retry_after_s=pool.retry_after_s or 1,
    )


def _priority_rule(rule: Any) -> PriorityRule:
    bands = tuple(
        PriorityBand(
            at_least=band.at_least if band.HasField("at_least") else None,
            below=band.below if band.HasField("below") else None,
            adjust=band.adjust,
        )
        for band in rule.bands
    )
    trusted = frozenset(TenantId(tenant) for tenant in rule.trusted_tenants)
    return PriorityRule(rule.header, bands, trusted)


def _api_key_source(api_key: Any) -> ApiKeySource:
    header = api_key.header or "authorization"
    if api_key.HasField("scheme"):
        scheme = api_key.scheme or None
    else:
        scheme = "Bearer" if header == "authorization" else None
    return ApiKeySource(header=header, scheme=scheme)


def _jwt_source(identity: Any) -> JwtSource:
    jwt = identity.jwt
    return JwtSource(
        metadata_namespace=jwt.metadata_namespace or DEFAULT_JWT_NAMESPACE,
        payload_key=jwt.payload_key or DEFAULT_JWT_PAYLOAD_KEY,
        tenant_claim=jwt.tenant_claim,
    )
