"""Budgets and rate limits: the pure rules, and the accounting engine over a real MemoryStore."""

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from sidecar.core.budgets import Estimate, counts_for, estimate, period_of
from sidecar.domain.accounting import BudgetWindow
from sidecar.domain.ids import TenantId, TierName
from sidecar.domain.policy import ClusterSpec, Policy, Price, TenantSpec
from sidecar.engine.accounting import Accounting, Spent
from sidecar.policy.loader import parse_policy
from sidecar.state.memory import MemoryStore
from sidecar.state.store import StoreUnavailable

NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()

KEY_A, KEY_B = "a" * 64, "b" * 64
POLICY = f"""
version: 1
identity:
  api_key: {{header: authorization}}
clusters:
  big:
    provider: openai
    model: big
    price: {{input_per_million_usd: 10, output_per_million_usd: 30}}
  small:
    provider: openai
    model: small
    price: {{input_per_million_usd: 1, output_per_million_usd: 2}}
models:
  chat: {{}}
tiers:
  paid:
    routes:
      chat: {{cluster: big, fallback: [small]}}
    rate_limit: {{requests_per_minute: 3, tokens_per_minute: 1000}}
tenants:
  acme: {{tier: paid, team: data, api_keys: ["sha256:{KEY_A}"]}}
  zeta: {{tier: paid, team: data, api_keys: ["sha256:{KEY_B}"]}}
jobs: {{header: x-job-id, non_critical: true}}
budgets:
  daily-tokens: {{per: tenant, window: day, tokens: 1000, soft_limit_percent: 50}}
  team-spend: {{per: team, window: month, spend_usd: 1.0, when_exhausted: downgrade}}
  nightly: {{per: job, window: day, tokens: 300}}
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(POLICY, "budgets.yaml")


def tenant(policy: Policy, name: str = "acme") -> TenantSpec:
    return policy.tenants[TenantId(name)]


class WallClock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def accounting(store: Any = None, clock: WallClock | None = None) -> Accounting:
    return Accounting(store or MemoryStore(), clock or WallClock())


TOKENS_400 = Estimate(400, 0.001)


# -- pure rules --------------------------------------------------------------------------


def test_day_and_month_windows_reset_at_utc_midnight_and_month_start() -> None:
    day = period_of(BudgetWindow.DAY, NOON)
    assert day.label == "2026-11-22"
    assert day.resets_at == datetime(2026, 11, 23, tzinfo=UTC).timestamp()
    december = datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp()
    month = period_of(BudgetWindow.MONTH, december)
    assert month.label == "2026-12"
    assert month.resets_at == datetime(2027, 1, 1, tzinfo=UTC).timestamp()


def test_counts_follow_the_selectors_and_scopes(policy: Policy) -> None:
    without_job = counts_for(policy.budgets, tenant(policy), None, NOON)
    assert [(c.budget.name, c.scope, c.unit.value) for c in without_job] == [
        ("daily-tokens", "acme", "tokens"),
        ("team-spend", "data", "usd"),
    ]
    with_job = counts_for(policy.budgets, tenant(policy), "n1", NOON)
    nightly = next(c for c in with_job if c.budget.name == "nightly")
    assert nightly.key == "budget:nightly:job:acme/n1:2026-11-22:tokens"
    assert all(
        c.ttl_s(NOON) == 12 * 3600 + 86_400 for c in with_job if c.budget.name != "team-spend"
    )


def test_estimate_is_prompt_bytes_over_four_plus_max_tokens_at_the_dearest_price() -> None:
    big = ClusterSpec("big", "openai", "big", None, price=Price(10, 30))  # type: ignore[arg-type]
    free = ClusterSpec("free", "openai", "free", None)  # type: ignore[arg-type]
    cost = estimate(401, 100, [free, big])
    assert cost.tokens == 101 + 100
    assert cost.usd == pytest.approx((101 * 10 + 100 * 30) / 1e6)
    assert estimate(8, 0, [free]).usd == 0


# -- budgets -----------------------------------------------------------------------------


async def test_a_spent_budget_refuses_with_its_name_the_amount_and_the_reset(
    policy: Policy,
) -> None:
    books = accounting()
    first = await books.admit(policy, tenant(policy), None, Estimate(1000, 0.0), False)
    assert first.refusal is None
    second = await books.admit(policy, tenant(policy), None, Estimate(200, 0.0), False)
    assert second.refusal is not None
    assert second.refusal.status == 429
    assert second.refusal.code == "budget_exceeded"
    message = second.refusal.message
    assert "'daily-tokens'" in message
    assert "tenant 'acme'" in message
    assert "is spent (1000 of 1000 tokens used or reserved)" in message
    assert "2026-11-23T00:00:00Z" in message
    assert second.refusal.retry_after_s == 12 * 3600
    assert second.holds == ()


async def test_a_request_larger_than_what_is_left_is_told_both_amounts(
    policy: Policy,
) -> None:
    books = accounting()
    await books.admit(policy, tenant(policy), None, Estimate(900, 0.0), False)
    refused = await books.admit(policy, tenant(policy), None, Estimate(200, 0.0), False)
    assert refused.refusal is not None
    assert "has 100 tokens left" in refused.refusal.message
    assert "may use up to 200 tokens" in refused.refusal.message
    assert "lower max_tokens" in refused.refusal.message


async def test_settling_replaces_the_estimate_with_the_real_usage(policy: Policy) -> None:
    store = MemoryStore()
    books = accounting(store)
    admission = await books.admit(policy, tenant(policy), None, Estimate(900, 0.5), False)
    books.settle(admission, Spent(tokens=120, usd=0.01, answered=True))
    await books.drain(1)
    key = admission.holds[0].count.key
    assert (await store.read(key)).used == 120
    assert (await store.read(key)).reserved == 0
    again = await books.admit(policy, tenant(policy), None, Estimate(800, 0.0), False)
    assert again.refusal is None


async def test_unanswered_requests_settle_at_zero_unreported_usage_at_the_estimate(
    policy: Policy,
) -> None:
    store = MemoryStore()
    books = accounting(store)
    lost = await books.admit(policy, tenant(policy), None, TOKENS_400, False)
    books.settle(lost, Spent(None, None, answered=False))
    unreported = await books.admit(policy, tenant(policy), None, TOKENS_400, False)
    books.settle(unreported, Spent(None, None, answered=True))
    await books.drain(1)
    assert (await store.read(lost.holds[0].count.key)).used == 400


async def test_soft_limit_is_announced_once_when_crossed(policy: Policy) -> None:
    books = accounting()
    seen: list[str] = []
    books.event_listeners.append(lambda event: seen.append(f"{event.name}:{event.budget}"))
    await books.admit(policy, tenant(policy), None, TOKENS_400, False)
    assert seen == []
    crossing = await books.admit(policy, tenant(policy), None, Estimate(200, 0.0), False)
    assert [e.name for e in crossing.events] == ["soft_limit"]
    await books.admit(policy, tenant(policy), None, Estimate(100, 0.0), False)
    assert seen == ["soft_limit:daily-tokens"]


async def test_non_critical_work_is_downgraded_past_the_soft_limit(policy: Policy) -> None:
    books = accounting()
    await books.admit(policy, tenant(policy), None, Estimate(600, 0.0), False)
    critical = await books.admit(policy, tenant(policy), None, Estimate(10, 0.0), False)
    assert critical.downgrade_reason is None
    batch = await books.admit(policy, tenant(policy), None, Estimate(10, 0.0), True)
    assert batch.downgrade_reason is not None
    assert "soft limit" in batch.downgrade_reason
    assert "downgraded" in [e.name for e in batch.events]


async def test_a_spent_downgrade_budget_moves_requests_on_and_still_counts_them(
    policy: Policy,
) -> None:
    store = MemoryStore()
    books = accounting(store)
    spender = await books.admit(policy, tenant(policy, "zeta"), None, Estimate(1, 0.95), False)
    books.settle(spender, Spent(1, 0.95, answered=True))
    await books.drain(1)
    admission = await books.admit(policy, tenant(policy), None, Estimate(1, 0.1), False)
    assert admission.refusal is None
    assert admission.downgrade_reason is not None
    assert "team 'data'" in admission.downgrade_reason
    assert [e.name for e in admission.events] == ["exhausted", "downgraded"]
    books.settle(admission, Spent(1, 0.2, answered=True))
    await books.drain(1)
    team_key = next(h.count.key for h in admission.holds if h.count.budget.name == "team-spend")
    assert (await store.read(team_key)).used == pytest.approx(1.15)


async def test_a_spent_downgrade_budget_refuses_when_nothing_is_cheaper(
    policy: Policy,
) -> None:
    books = accounting()
    spender = await books.admit(policy, tenant(policy, "zeta"), None, Estimate(1, 0.95), False)
    books.settle(spender, Spent(1, 1.0, answered=True))
    await books.drain(1)
    admission = await books.admit(
        policy, tenant(policy), None, Estimate(1, 0.1), False, can_downgrade=False
    )
    assert admission.refusal is not None
    assert admission.refusal.code == "budget_exceeded"
    assert admission.holds == ()
    assert [e.name for e in admission.events] == ["exhausted"]


async def test_non_critical_work_stays_when_nothing_is_cheaper(policy: Policy) -> None:
    books = accounting()
    await books.admit(policy, tenant(policy), None, Estimate(600, 0.0), False)
    batch = await books.admit(
        policy, tenant(policy), None, Estimate(10, 0.0), True, can_downgrade=False
    )
    assert batch.downgrade_reason is None
    assert "downgraded" not in [e.name for e in batch.events]


async def test_job_budgets_count_each_job_of_each_tenant_alone(policy: Policy) -> None:
    books = accounting()
    first = await books.admit(policy, tenant(policy), "n1", Estimate(300, 0), False)
    assert first.refusal is None
    refused = await books.admit(policy, tenant(policy), "n1", Estimate(1, 0), False)
    assert refused.refusal is not None
    assert "job 'n1' of tenant 'acme'" in refused.refusal.message
    other_job = await books.admit(policy, tenant(policy), "n2", Estimate(1, 0), False)
    assert other_job.refusal is None
    other_tenant = await books.admit(policy, tenant(policy, "zeta"), "n1", Estimate(1, 0), False)
    assert other_tenant.refusal is None


async def test_concurrent_admissions_never_reserve_past_the_limit(policy: Policy) -> None:
    store = MemoryStore()
    books = accounting(store)
    admissions = await asyncio.gather(
        *(books.admit(policy, tenant(policy), None, Estimate(100, 0.0), False) for _ in range(30))
    )
    granted = [a for a in admissions if a.refusal is None]
    assert len(granted) == 10
    key = granted[0].holds[0].count.key
    assert (await store.read(key)).reserved == 1000


async def test_a_refused_request_releases_what_it_had_reserved(policy: Policy) -> None:
    store = MemoryStore()
    books = accounting(store)
    await books.admit(policy, tenant(policy), "n1", Estimate(300, 0), False)
    refused = await books.admit(policy, tenant(policy), "n1", Estimate(50, 0), False)
    assert refused.refusal is not None
    counts = counts_for(policy.budgets, tenant(policy), "n1", NOON)
    daily = next(c for c in counts if c.budget.name == "daily-tokens")
    assert (await store.read(daily.key)).reserved == 300


class DownStore(MemoryStore):
    async def reserve(self, key: str, amount: float, limit: float, ttl_s: int) -> Any:
        raise StoreUnavailable("down")

    async def hit(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("down")


async def test_a_store_outage_lets_requests_through(policy: Policy) -> None:
    books = accounting(DownStore())
    admission = await books.admit(policy, tenant(policy), None, TOKENS_400, False)
    assert admission.refusal is None
    assert admission.holds == ()
    assert await books.check_rate(policy, tenant(policy), 10) is None


# -- rate limits -------------------------------------------------------------------------


async def test_requests_per_minute_refuse_with_retry_after(policy: Policy) -> None:
    clock = WallClock()
    books = accounting(clock=clock)
    for _ in range(3):
        assert await books.check_rate(policy, tenant(policy), 10) is None
    refused = await books.check_rate(policy, tenant(policy), 10)
    assert refused is not None
    assert (refused.status, refused.code) == (429, "rate_limit_exceeded")
    assert "3 requests per minute for tenant 'acme'" in refused.message
    assert refused.retry_after_s == 20
    clock.now += 20
    assert await books.check_rate(policy, tenant(policy), 10) is None


async def test_tokens_per_minute_count_the_estimate(policy: Policy) -> None:
    books = accounting()
    assert await books.check_rate(policy, tenant(policy), 900) is None
    refused = await books.check_rate(policy, tenant(policy), 200)
    assert refused is not None
    assert "1000 tokens per minute" in refused.message
    too_big = await books.check_rate(policy, tenant(policy, "zeta"), 5000)
    assert too_big is not None
    assert "lower max_tokens" in too_big.message
    assert too_big.retry_after_s is None


async def test_spend_totals_by_tenant_and_team(policy: Policy) -> None:
    books = accounting()
    books.record_spend(tenant(policy), 100, 0.5)
    books.record_spend(tenant(policy, "zeta"), 10, None)
    view = await books.view(policy)
    spend = view["spend_since_start"]
    assert spend["tenants"]["acme"] == {"requests": 1, "tokens": 100, "usd": 0.5}
    assert spend["teams"]["data"] == {"requests": 2, "tokens": 110, "usd": 0.5}
    assert set(view["budgets"]) == {"daily-tokens", "team-spend", "nightly"}


def test_tier_names_are_typed(policy: Policy) -> None:
    assert policy.tenants[TenantId("acme")].tier == TierName("paid")
