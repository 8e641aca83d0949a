"""Policy sections for counting: budgets, jobs, rate limits, the store and the cost cache.

A good file compiles to the values the engine reads; each mistake an operator can make
is refused with the field it is in and what is wrong.
"""

import pytest

from sidecar.domain.accounting import BudgetScope, BudgetUnit, BudgetWindow
from sidecar.domain.ids import ModelName, TenantId, TierName
from sidecar.policy.loader import parse_policy
from sidecar.policy.problems import PolicyError
from sidecar.state.factory import StoreConfigError, redis_url_of

KEY = "a" * 64
BASE = f"""\
version: 1
clusters:
  cheap: {{provider: openai, model: small, price: {{input_per_million_usd: 1}}}}
  dear: {{provider: openai, model: big}}
models:
  chat: {{}}
tiers:
  free:
    routes:
      chat: {{cluster: dear, fallback: [cheap], non_critical: true}}
    rate_limit: {{requests_per_minute: 60}}
tenants:
  acme:
    tier: free
    team: data
    api_keys: ["sha256:{KEY}"]
    rate_limit: {{tokens_per_minute: 5000}}
"""


def refused(extra: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(BASE + extra, "policy.yaml")
    return [problem.render("policy.yaml") for problem in caught.value.problems]


def test_counting_sections_compile_to_what_the_engine_reads() -> None:
    policy = parse_policy(
        BASE
        + """\
limits: {assumed_max_tokens: 256}
state: {store: redis, redis_url_env: REDIS_URL, timeout_s: 0.05}
jobs: {header: x-job, non_critical: true}
budgets:
  team-month:
    per: team
    window: month
    spend_usd: 100
    tokens: 1000000
    teams: [data]
    soft_limit_percent: 90
    when_exhausted: downgrade
""",
        "policy.yaml",
    )
    (budget,) = policy.budgets
    assert (budget.per, budget.window) == (BudgetScope.TEAM, BudgetWindow.MONTH)
    assert budget.limits() == ((BudgetUnit.TOKENS, 1_000_000.0), (BudgetUnit.USD, 100.0))
    assert budget.soft_fraction == pytest.approx(0.9)
    assert budget.downgrade
    assert policy.assumed_max_tokens == 256
    assert policy.store.shared
    assert policy.store.timeout_s == 0.05
    assert policy.jobs is not None
    assert policy.jobs.header == "x-job"
    acme = policy.tenants[TenantId("acme")]
    assert acme.team == "data"
    # The tenant's own limit replaces its tier's.
    assert policy.rate_limit_of(acme) == acme.rate_limit
    assert acme.rate_limit is not None
    assert acme.rate_limit.tokens_per_minute == 5000
    assert acme.rate_limit.requests_per_minute is None
    tier = policy.tiers[TierName("free")]
    assert tier.routes[ModelName("chat")].non_critical


def test_defaults_count_in_memory_with_a_1024_token_assumption() -> None:
    policy = parse_policy(BASE, "policy.yaml")
    assert not policy.store.shared
    assert policy.assumed_max_tokens == 1024
    assert policy.budgets == ()
    assert policy.models[ModelName("chat")].cost_cache is None


def test_the_cost_cache_defaults() -> None:
    text = BASE.replace("chat: {}", "chat: {cost_cache: {deterministic_chat: true}}")
    cache = parse_policy(text, "policy.yaml").models[ModelName("chat")].cost_cache
    assert cache is not None
    assert (cache.max_entries, cache.max_age_s, cache.deterministic_chat, cache.shared) == (
        10_000,
        3600.0,
        True,
        False,
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "budgets: {b: {per: tenant, window: day}}\n",
            "budgets.b: this budget limits nothing: set 'tokens', 'spend_usd' or both above 0",
        ),
        (
            "budgets: {b: {per: tenant, window: week, tokens: 5}}\n",
            "budgets.b.window: 'week' is not one of: day, month",
        ),
        (
            "budgets: {b: {per: job, window: day, tokens: 5}}\n",
            "budgets.b.per: job budgets need the 'jobs' section",
        ),
        (
            "budgets: {b: {per: tenant, window: day, tokens: 5, tenants: [zeta]}}\n",
            "budgets.b.tenants[0]: unknown tenant 'zeta' (known: acme)",
        ),
        (
            "budgets: {b: {per: tenant, window: day, tokens: 5, tiers: [gold]}}\n",
            "budgets.b.tiers[0]: unknown tier 'gold' (known: free)",
        ),
        (
            "budgets: {b: {per: team, window: day, tokens: 5, teams: [ops]}}\n",
            "budgets.b.teams[0]: unknown team 'ops' (known: data)",
        ),
        (
            "budgets: {b: {per: tenant, window: day, tokens: 5, when_exhausted: wait}}\n",
            "budgets.b.when_exhausted: 'wait' is not one of: refuse, downgrade",
        ),
        ("state: {store: redis}\n", "state: store 'redis' needs 'redis_url' or 'redis_url_env'"),
        (
            "state: {store: redis, redis_url: 'redis://a:1', redis_url_env: URL}\n",
            "state: set 'redis_url' or 'redis_url_env', not both",
        ),
        (
            "state: {store: redis, redis_url: 'http://cache:6379'}\n",
            "state.redis_url: must start with redis://, rediss:// or unix://",
        ),
        (
            "state: {redis_url: 'redis://cache:6379'}\n",
            "state.store: a Redis address is set but store is not 'redis'",
        ),
        ("jobs: {header: authorization}\n", "jobs.header: 'authorization' is a header"),
    ],
)
def test_counting_mistakes_are_refused_with_the_field(extra: str, expected: str) -> None:
    problems = refused(extra)
    assert any(expected in problem for problem in problems), problems


def test_spend_budgets_need_a_priced_cluster() -> None:
    unpriced = BASE.replace(", price: {input_per_million_usd: 1}", "")
    with pytest.raises(PolicyError, match="no cluster has a 'price'"):
        parse_policy(unpriced + "budgets: {b: {per: tenant, window: day, spend_usd: 5}}\n", "p")


def test_a_team_budget_without_teams_is_refused() -> None:
    no_team = BASE.replace("    team: data\n", "")
    with pytest.raises(PolicyError, match="no tenant names a 'team'"):
        parse_policy(no_team + "budgets: {b: {per: team, window: day, tokens: 5}}\n", "p")


def test_the_redis_url_comes_from_the_named_variable() -> None:
    policy = parse_policy(BASE + "state: {store: redis, redis_url_env: REDIS_URL}\n", "p")
    assert redis_url_of(policy.store, {"REDIS_URL": "redis://cache:6379/2"}) == (
        "redis://cache:6379/2"
    )
    with pytest.raises(StoreConfigError, match="REDIS_URL, which is not set"):
        redis_url_of(policy.store, {})
