"""The compiled routing policy: an immutable value the core reads.

The ``policy`` package builds a :class:`Policy` from the operator's YAML once; after
that nothing changes it. A different policy is a different value, never an edit.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.domain.accounting import (
    DEFAULT_ASSUMED_MAX_TOKENS,
    BudgetSpec,
    CostCacheSpec,
    JobsSpec,
    RateLimitSpec,
    StoreSpec,
)
from sidecar.domain.api import Provider
from sidecar.domain.canary import CANARY, CanarySpec
from sidecar.domain.flags import FlagSpec
from sidecar.domain.ids import ClusterName, ModelName, TenantId, TierName
from sidecar.domain.objective import ObjectiveSpec, ProfileSpec
from sidecar.domain.resilience import BreakerConfig, PoolConfig
from sidecar.domain.slo import SloSpec

DEFAULT_CLUSTER_HEADER = "x-ai-sidecar-cluster"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_JWT_NAMESPACE = "envoy.filters.http.jwt_authn"
DEFAULT_JWT_PAYLOAD_KEY = "jwt_payload"
DEFAULT_JWT_FAILURE_KEY = "jwt_failure"


@dataclass(frozen=True, slots=True)
class Price:
    """What a cluster's tokens cost, in US dollars per million."""

    input_per_million_usd: float
    output_per_million_usd: float

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        """The cost of one call that used these tokens."""
        return (
            input_tokens * self.input_per_million_usd + output_tokens * self.output_per_million_usd
        ) / 1_000_000


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """An upstream model cluster and what its servers expect."""

    name: ClusterName
    provider: Provider
    upstream_model: str
    credential_env: str | None
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    max_concurrent: int | None = None
    price: Price | None = None
    profile: ProfileSpec | None = None


@dataclass(frozen=True, slots=True)
class AnswerCacheSpec:
    """Which answers of a virtual model are kept, for how long, and under what key."""

    max_entries: int
    max_age_s: float
    key_fields: tuple[str, ...]
    key_headers: tuple[str, ...]
    shared: bool


@dataclass(frozen=True, slots=True)
class DegradedSpec:
    """The last rung of a chain: a fixed message, or a queue an operator drains."""

    message: str | None
    queue_max: int | None
    json: bytes | None = None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A virtual model: the name applications ask for, and its last-resort answers."""

    name: ModelName
    answer_cache: AnswerCacheSpec | None = None
    degraded: DegradedSpec | None = None
    paths: tuple[str, ...] = ()
    cost_cache: CostCacheSpec | None = None
    slo: SloSpec | None = None
    objective: ObjectiveSpec | None = None


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """Where a tier's requests for one virtual model go: clusters in order of preference.

    ``non_critical`` work is the first moved down the chain under budget pressure.
    """

    chain: tuple[ClusterName, ...]
    non_critical: bool = False
    canary: CanarySpec | None = None

    def chain_for(self, variant: str) -> tuple[ClusterName, ...]:
        """The chain a request of ``variant`` walks: the canary first, then the route's."""
        if variant == CANARY and self.canary is not None:
            return (self.canary.cluster, *self.chain)
        return self.chain


@dataclass(frozen=True, slots=True)
class TierSpec:
    """A service tier: its routes, its bulkhead pool, its shedding priority, its rate limit."""

    name: TierName
    routes: Mapping[ModelName, RouteSpec]
    pool: str | None = None
    priority: int = 0
    rate_limit: RateLimitSpec | None = None


@dataclass(frozen=True, slots=True)
class PriorityBand:
    """A range of a header's numeric value, and the priority adjustment it brings."""

    at_least: float | None
    below: float | None
    adjust: int

    def matches(self, value: float) -> bool:
        """Whether ``value`` falls in this band."""
        if self.at_least is not None and value < self.at_least:
            return False
        return self.below is None or value < self.below


@dataclass(frozen=True, slots=True)
class PriorityRule:
    """Adjusts priority by the value of a trusted header; the first matching band wins."""

    header: str
    bands: tuple[PriorityBand, ...]
    trusted_tenants: frozenset[TenantId] = frozenset()


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """A tenant, the tier it belongs to, its team, and a rate limit of its own if any."""

    tenant_id: TenantId
    tier: TierName
    team: str | None = None
    rate_limit: RateLimitSpec | None = None


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
    failure_key: str = DEFAULT_JWT_FAILURE_KEY


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the routing core needs from the operator's policy file.

    ``tiers`` maps a tier to its routes (virtual model to cluster chain);
    ``tenant_by_key_digest`` maps the hex SHA-256 of an API key to its tenant.
    """

    digest: str
    cluster_header: str
    max_body_bytes: int
    api_key_source: ApiKeySource
    jwt_source: JwtSource | None
    clusters: Mapping[ClusterName, ClusterSpec]
    models: Mapping[ModelName, ModelSpec]
    tenants: Mapping[TenantId, TenantSpec]
    tenant_by_key_digest: Mapping[str, TenantId]
    tiers: Mapping[TierName, TierSpec]
    pools: tuple[PoolConfig, ...] = ()
    priority_rules: tuple[PriorityRule, ...] = ()
    service_paths: Mapping[str, ModelName] = field(default_factory=dict)
    budgets: tuple[BudgetSpec, ...] = ()
    jobs: JobsSpec | None = None
    store: StoreSpec = field(default_factory=StoreSpec)
    assumed_max_tokens: int = DEFAULT_ASSUMED_MAX_TOKENS
    flags: Mapping[str, FlagSpec] = field(default_factory=dict)
    latency_window_s: float = 300.0

    def rate_limit_of(self, tenant: TenantSpec) -> RateLimitSpec | None:
        """The tenant's own rate limit, else its tier's, else None."""
        if tenant.rate_limit is not None:
            return tenant.rate_limit
        tier = self.tiers.get(tenant.tier)
        return tier.rate_limit if tier is not None else None
