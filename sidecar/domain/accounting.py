"""What the policy says about counting: budgets, rate limits, jobs, the store, the cost cache.

Plain immutable values compiled from the policy file; the accounting engine
(:mod:`sidecar.engine.accounting`) and the pure budget rules (:mod:`sidecar.core.budgets`)
read them.
"""

from dataclasses import dataclass
from enum import Enum

from sidecar.domain.ids import TenantId, TierName

DEFAULT_ASSUMED_MAX_TOKENS = 1024
DEFAULT_SOFT_LIMIT_PERCENT = 80.0
DEFAULT_NAMESPACE = "ai-sidecar"
DEFAULT_STORE_TIMEOUT_S = 0.1
DEFAULT_FAILURES_TO_LOCAL = 3
DEFAULT_RETRY_SHARED_AFTER_S = 5.0
DEFAULT_COST_CACHE_ENTRIES = 10_000
DEFAULT_COST_CACHE_AGE_S = 3600.0


class BudgetScope(Enum):
    """What one count of a budget covers."""

    TENANT = "tenant"
    TEAM = "team"
    JOB = "job"


class BudgetWindow(Enum):
    """The calendar period (UTC) after which a budget's count starts again."""

    DAY = "day"
    MONTH = "month"


class BudgetUnit(Enum):
    """What a budget limit counts."""

    TOKENS = "tokens"
    USD = "usd"


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """A named budget: who it counts, over which window, its limits and what happens at them.

    A request counts against it when its tenant matches every selector that is not
    empty (``tenants``, ``tiers``, ``teams``) and, for a job budget, names a job.
    """

    name: str
    per: BudgetScope
    window: BudgetWindow
    tokens: int | None
    spend_usd: float | None
    soft_fraction: float
    downgrade: bool
    tenants: frozenset[TenantId] = frozenset()
    tiers: frozenset[TierName] = frozenset()
    teams: frozenset[str] = frozenset()

    def limits(self) -> tuple[tuple[BudgetUnit, float], ...]:
        """The limits this budget sets, by unit."""
        found: list[tuple[BudgetUnit, float]] = []
        if self.tokens is not None:
            found.append((BudgetUnit.TOKENS, float(self.tokens)))
        if self.spend_usd is not None:
            found.append((BudgetUnit.USD, self.spend_usd))
        return tuple(found)


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """Requests and tokens per minute for one tenant (None: that one is not limited)."""

    requests_per_minute: int | None
    tokens_per_minute: int | None


@dataclass(frozen=True, slots=True)
class JobsSpec:
    """Where requests name their batch job, and whether jobs are non-critical work."""

    header: str
    non_critical: bool


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """Where budgets and rate limits are counted: this process, or a shared Redis."""

    shared: bool = False
    redis_url: str | None = None
    redis_url_env: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    timeout_s: float = DEFAULT_STORE_TIMEOUT_S
    failures_to_local: int = DEFAULT_FAILURES_TO_LOCAL
    retry_shared_after_s: float = DEFAULT_RETRY_SHARED_AFTER_S


@dataclass(frozen=True, slots=True)
class CostCacheSpec:
    """Which answers are served again without calling a model, and for how long."""

    max_entries: int = DEFAULT_COST_CACHE_ENTRIES
    max_age_s: float = DEFAULT_COST_CACHE_AGE_S
    deterministic_chat: bool = False
    shared: bool = False
