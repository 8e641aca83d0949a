"""Turning a schema-checked policy message into the immutable :class:`Policy`.

Here the references between sections are resolved (a tenant's tier, a route's
virtual model and cluster) and cross-section rules are checked (one API key, one
tenant). Problems carry the field path; the caller adds the lines.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sidecar.domain.api import Provider
from sidecar.domain.ids import ClusterName, ModelName, TenantId, TierName
from sidecar.domain.policy import (
    DEFAULT_CLUSTER_HEADER,
    DEFAULT_JWT_NAMESPACE,
    DEFAULT_JWT_PAYLOAD_KEY,
    DEFAULT_MAX_BODY_BYTES,
    ApiKeySource,
    ClusterSpec,
    JwtSource,
    Policy,
    TenantSpec,
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
        for model_name, route in tier.routes.items():
            path: FieldPath = ("tiers", tier_name, "routes", model_name)
            if model_name not in message.models:
                yield (path, _unknown("virtual model", model_name, message.models))
            if route.cluster not in message.clusters:
                yield (
                    (*path, "cluster"),
                    _unknown("cluster", route.cluster, message.clusters),
                )


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
            {ClusterName(name): _cluster(name, c) for name, c in message.clusters.items()}
        ),
        models=frozenset(ModelName(name) for name in message.models),
        tenants=MappingProxyType(
            {
                TenantId(tenant_id): TenantSpec(TenantId(tenant_id), TierName(tenant.tier))
                for tenant_id, tenant in message.tenants.items()
            }
        ),
        tenant_by_key_digest=MappingProxyType(
            {
                key_digest.removeprefix(_KEY_DIGEST_PREFIX): TenantId(tenant_id)
                for tenant_id, tenant in message.tenants.items()
                for key_digest in tenant.api_keys
            }
        ),
        routes=MappingProxyType(
            {
                TierName(tier_name): MappingProxyType(
                    {
                        ModelName(model): ClusterName(route.cluster)
                        for model, route in tier.routes.items()
                    }
                )
                for tier_name, tier in message.tiers.items()
            }
        ),
    )


def _cluster(name: str, cluster: Any) -> ClusterSpec:
    return ClusterSpec(
        name=ClusterName(name),
        provider=Provider(cluster.provider),
        upstream_model=cluster.model,
        credential_env=cluster.credential_env or None,
    )


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
