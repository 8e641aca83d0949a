"""Compiling the counting sections of a policy: budgets, rate limits, jobs, store, cost cache.

:func:`accounting_problems` checks what the schema cannot (references to tenants,
tiers and teams, a budget that limits nothing, a Redis store with no address);
the builders turn the checked messages into the values of
:mod:`sidecar.domain.accounting`.
"""

from collections.abc import Iterator
from typing import Any

from sidecar.domain.accounting import (
    DEFAULT_COST_CACHE_AGE_S,
    DEFAULT_COST_CACHE_ENTRIES,
    DEFAULT_FAILURES_TO_LOCAL,
    DEFAULT_NAMESPACE,
    DEFAULT_RETRY_SHARED_AFTER_S,
    DEFAULT_SOFT_LIMIT_PERCENT,
    DEFAULT_STORE_TIMEOUT_S,
    BudgetScope,
    BudgetSpec,
    BudgetWindow,
    CostCacheSpec,
    JobsSpec,
    RateLimitSpec,
    StoreSpec,
)
from sidecar.domain.ids import TenantId, TierName
from sidecar.policy.yaml_source import FieldPath

_HEADERS_WITH_OTHER_MEANINGS = frozenset(
    {"authorization", "content-length", "content-type", "host", "cookie", "transfer-encoding"}
)


def accounting_problems(message: Any) -> Iterator[tuple[FieldPath, str]]:
    """What is wrong in the budgets, jobs and state sections, beyond the schema."""
    teams = {tenant.team for tenant in message.tenants.values() if tenant.team}
    for name, budget in sorted(message.budgets.items()):
        yield from _budget_problems(message, ("budgets", name), budget, teams)
    if message.HasField("jobs"):
        header = message.jobs.header
        if header in _HEADERS_WITH_OTHER_MEANINGS or header.startswith("x-envoy-"):
            yield (("jobs", "header"), f"'{header}' is a header with another meaning")
    yield from _state_problems(message)


def _budget_problems(
    message: Any, path: FieldPath, budget: Any, teams: set[str]
) -> Iterator[tuple[FieldPath, str]]:
    if not budget.tokens and not budget.spend_usd:
        yield (
            path,
            "this budget limits nothing: set 'tokens', 'spend_usd' or both above 0 "
            "(0 means not limited)",
        )
    if budget.spend_usd and not _any_priced(message):
        yield ((*path, "spend_usd"), "no cluster has a 'price', so spend is never counted")
    if budget.per == "team" and not teams:
        yield ((*path, "per"), "no tenant names a 'team', so this budget never applies")
    if budget.per == "job" and not message.HasField("jobs"):
        yield ((*path, "per"), "job budgets need the 'jobs' section (the job id header)")
    selectors = (("tenants", message.tenants), ("tiers", message.tiers))
    for field, known in selectors:
        for position, name in enumerate(getattr(budget, field)):
            if name not in known:
                yield ((*path, field, position), _unknown(field[:-1], name, known))
    for position, team in enumerate(budget.teams):
        if team not in teams:
            yield ((*path, "teams", position), _unknown("team", team, teams))


def _state_problems(message: Any) -> Iterator[tuple[FieldPath, str]]:
    state = message.state
    if state.store == "redis" and not state.redis_url and not state.redis_url_env:
        yield (("state",), "store 'redis' needs 'redis_url' or 'redis_url_env'")
    if state.redis_url and state.redis_url_env:
        yield (("state",), "set 'redis_url' or 'redis_url_env', not both")
    if state.store != "redis" and (state.redis_url or state.redis_url_env):
        yield (("state", "store"), "a Redis address is set but store is not 'redis'")
    if state.redis_url and not state.redis_url.startswith(("redis://", "rediss://", "unix://")):
        yield (("state", "redis_url"), "must start with redis://, rediss:// or unix://")


def _any_priced(message: Any) -> bool:
    return any(cluster.HasField("price") for cluster in message.clusters.values())


def _unknown(kind: str, name: str, known: Any) -> str:
    names = ", ".join(sorted(known)) or "none defined"
    return f"unknown {kind} '{name}' (known: {names})"


def build_budgets(message: Any) -> tuple[BudgetSpec, ...]:
    """The policy's budgets, in name order."""
    return tuple(_budget(name, budget) for name, budget in sorted(message.budgets.items()))


def _budget(name: str, budget: Any) -> BudgetSpec:
    soft_percent = budget.soft_limit_percent or DEFAULT_SOFT_LIMIT_PERCENT
    return BudgetSpec(
        name=name,
        per=BudgetScope(budget.per),
        window=BudgetWindow(budget.window),
        tokens=budget.tokens or None,
        spend_usd=budget.spend_usd or None,
        soft_fraction=soft_percent / 100,
        downgrade=budget.when_exhausted == "downgrade",
        tenants=frozenset(TenantId(t) for t in budget.tenants),
        tiers=frozenset(TierName(t) for t in budget.tiers),
        teams=frozenset(budget.teams),
    )


def build_rate_limit(owner: Any) -> RateLimitSpec | None:
    """The rate limit set on a tier or tenant message, if any."""
    if not owner.HasField("rate_limit"):
        return None
    limit = owner.rate_limit
    if not limit.requests_per_minute and not limit.tokens_per_minute:
        return None
    return RateLimitSpec(limit.requests_per_minute or None, limit.tokens_per_minute or None)


def build_jobs(message: Any) -> JobsSpec | None:
    if not message.HasField("jobs"):
        return None
    return JobsSpec(message.jobs.header, message.jobs.non_critical)


def build_store(message: Any) -> StoreSpec:
    state = message.state
    return StoreSpec(
        shared=state.store == "redis",
        redis_url=state.redis_url or None,
        redis_url_env=state.redis_url_env or None,
        namespace=state.namespace or DEFAULT_NAMESPACE,
        timeout_s=state.timeout_s or DEFAULT_STORE_TIMEOUT_S,
        failures_to_local=state.failures_to_local or DEFAULT_FAILURES_TO_LOCAL,
        retry_shared_after_s=state.retry_shared_after_s or DEFAULT_RETRY_SHARED_AFTER_S,
    )


def build_cost_cache(model: Any) -> CostCacheSpec | None:
    if not model.HasField("cost_cache"):
        return None
    spec = model.cost_cache
    return CostCacheSpec(
        max_entries=spec.max_entries or DEFAULT_COST_CACHE_ENTRIES,
        max_age_s=spec.max_age_s or DEFAULT_COST_CACHE_AGE_S,
        deterministic_chat=spec.deterministic_chat,
        shared=spec.shared,
    )
