"""The compiled routing policy: an immutable value the core reads.

The ``policy`` package builds a :class:`Policy` from the operator's YAML once; after
that nothing changes it. A reload builds a new one and swaps it in whole.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.domain.api import Provider
from sidecar.domain.ids import ClusterName, ModelName, TenantId, TierName

DEFAULT_CLUSTER_HEADER = "x-ai-sidecar-cluster"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_JWT_NAMESPACE = "envoy.filters.http.jwt_authn"
DEFAULT_JWT_PAYLOAD_KEY = "jwt_payload"


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """An upstream model cluster and what its servers expect."""

    name: ClusterName
    provider: Provider
    upstream_model: str
    credential_env: str | None


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """A tenant and the tier it belongs to."""

    tenant_id: TenantId
    tier: TierName


@dataclass(frozen=True, slots=True)
class ApiKeySource:
    """Where clients present API keys: a header, and an optional scheme before the key."""

    header: str
    scheme: str | None


@dataclass(frozen=True, slots=True)
class JwtSource:
    """Where Envoy's jwt_authn filter leaves a verified token's claims."""

    metadata_namespace: str
    payload_key: str
    tenant_claim: str


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the routing core needs from the operator's policy file.

    ``routes`` maps a tier and a virtual model to the cluster serving it;
    ``tenant_by_key_digest`` maps the hex SHA-256 of an API key to its tenant.
    """

    digest: str
    cluster_header: str
    max_body_bytes: int
    api_key_source: ApiKeySource
    jwt_source: JwtSource | None
    clusters: Mapping[ClusterName, ClusterSpec]
    models: frozenset[ModelName]
    tenants: Mapping[TenantId, TenantSpec]
    tenant_by_key_digest: Mapping[str, TenantId]
    routes: Mapping[TierName, Mapping[ModelName, ClusterName]]
