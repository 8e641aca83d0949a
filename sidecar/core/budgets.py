"""Which budget counts a request touches, and what it may cost them: pure rules.

A request counts against every budget of the policy whose selectors match its tenant
(and, for job budgets, that names a job). Each budget has one count per scope (the
tenant, its team, or the tenant's job) and calendar window, and a count per limit
unit (tokens, US dollars). :func:`counts_for` lists those counts with their store
keys; :func:`estimate` prices a request before it runs, so admission can reserve it.

Windows are UTC calendar days and months, read from the wall clock the caller passes
(``now`` in Unix seconds): replicas sharing a store agree on them. A window's keys
live until a day after it ends, then expire.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sidecar.domain.accounting import BudgetScope, BudgetSpec, BudgetUnit, BudgetWindow
from sidecar.domain.policy import ClusterSpec, TenantSpec

KEY_GRACE_S = 86_400
"""How long a window's keys outlive it (late settlements still land in it)."""

BYTES_PER_TOKEN = 4
"""The prompt estimate: one token per this many bytes of request body (rounded up)."""


@dataclass(frozen=True, slots=True)
class Period:
    """One window of a budget: its label in keys and when the next one starts."""

    label: str
    resets_at: float


@dataclass(frozen=True, slots=True)
class BudgetCount:
    """One count a request reserves against: a budget's limit in one unit, for one scope."""

    budget: BudgetSpec
    scope: str
    unit: BudgetUnit
    limit: float
    key: str
    period: Period

    @property
    def soft_limit(self) -> float:
        return self.limit * self.budget.soft_fraction

    def ttl_s(self, now: float) -> int:
        """The key's time to live from ``now``: to the window's end, plus a day."""
        return max(1, math.ceil(self.period.resets_at - now) + KEY_GRACE_S)


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a request may use at most: tokens (prompt estimate plus max tokens) and dollars."""

    tokens: int
    usd: float

    def amount(self, unit: BudgetUnit) -> float:
        return float(self.tokens) if unit is BudgetUnit.TOKENS else self.usd


def period_of(window: BudgetWindow, now: float) -> Period:
    """The window holding the instant ``now`` (Unix seconds, UTC calendar)."""
    moment = datetime.fromtimestamp(now, UTC)
    if window is BudgetWindow.DAY:
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return Period(start.strftime("%Y-%m-%d"), (start + timedelta(days=1)).timestamp())
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else (start.replace(month=start.month + 1))
    )
    return Period(start.strftime("%Y-%m"), following.timestamp())


def scope_of(budget: BudgetSpec, tenant: TenantSpec, job: str | None) -> str | None:
    """The scope a request counts in for ``budget``, or None if the budget does not apply."""
    if budget.tenants and tenant.tenant_id not in budget.tenants:
        return None
    if budget.tiers and tenant.tier not in budget.tiers:
        return None
    if budget.teams and tenant.team not in budget.teams:
        return None
    if budget.per is BudgetScope.TENANT:
        return tenant.tenant_id
    if budget.per is BudgetScope.TEAM:
        return tenant.team
    return f"{tenant.tenant_id}/{job}" if job is not None else None


def counts_for(
    budgets: Iterable[BudgetSpec], tenant: TenantSpec, job: str | None, now: float
) -> tuple[BudgetCount, ...]:
    """Every count the request of ``tenant`` (and ``job``) touches at ``now``."""
    found: list[BudgetCount] = []
    for budget in budgets:
        scope = scope_of(budget, tenant, job)
        if scope is None:
            continue
        period = period_of(budget.window, now)
        for unit, limit in budget.limits():
            key = f"budget:{budget.name}:{budget.per.value}:{scope}:{period.label}:{unit.value}"
            found.append(BudgetCount(budget, scope, unit, limit, key, period))
    return tuple(found)


def estimate(body_bytes: int, max_output_tokens: int, clusters: Sequence[ClusterSpec]) -> Estimate:
    """The most a request may use: its prompt estimate plus ``max_output_tokens``.

    Dollars are priced at the dearest input and output prices among ``clusters`` (the
    ones that may serve it); clusters without a price cost nothing.
    """
    input_tokens = -(-body_bytes // BYTES_PER_TOKEN)
    priced = [cluster.price for cluster in clusters if cluster.price is not None]
    input_price = max((price.input_per_million_usd for price in priced), default=0.0)
    output_price = max((price.output_per_million_usd for price in priced), default=0.0)
    usd = (input_tokens * input_price + max_output_tokens * output_price) / 1_000_000
    return Estimate(input_tokens + max_output_tokens, usd)


def format_reset(resets_at: float) -> str:
    """A window's reset instant for people: ISO 8601 in UTC."""
    return datetime.fromtimestamp(resets_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
