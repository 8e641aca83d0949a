"""Budgets and rate limits: checked when a request is admitted, settled when it ends.

:meth:`Accounting.check_rate` counts the request against its tenant's requests and
tokens per minute. :meth:`Accounting.admit` reserves the request's estimate
(:mod:`sidecar.core.budgets`) on every budget count it touches, all at once; the
answer says whether the request goes on as asked, goes on downgraded to cheaper
clusters, or is refused. :meth:`Accounting.settle` replaces the reservations with
what the answer really used, in the background, when the request's stream ends; a
request that got no answer settles at zero, one whose usage the answer did not report
keeps its estimate.

The store may be shared (Redis behind a guard that falls back to local counting) or
this process's own; either way a store outage never fails a request: admission then
lets it through and logs why.
"""

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sidecar.core.budgets import BudgetCount, Estimate, counts_for, format_reset
from sidecar.domain.accounting import BudgetScope, BudgetSpec, BudgetUnit, BudgetWindow
from sidecar.domain.outcome import (
    Rejection,
    budget_exhausted,
    budget_too_small,
    over_rate_limit_capacity,
    rate_limited,
)
from sidecar.domain.policy import Policy, TenantSpec
from sidecar.state.guarded import GuardedStore
from sidecar.state.store import CounterStore, Reservation, StoreUnavailable

log = logging.getLogger("sidecar.budgets")

RATE_WINDOW_S = 60
"""Rate limits are per minute."""

_T = TypeVar("_T")

MAX_JOBS_SHOWN = 1000
"""Jobs this process remembers for the state view (the most recent)."""

MAX_CACHED_COUNTS = 10_000
"""Tenant and job combinations whose budget counts are kept (then the cache starts over)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation on one budget count, to settle when the request ends."""

    count: BudgetCount
    reservation_id: str
    estimate: float


@dataclass(frozen=True, slots=True)
class BudgetEvent:
    """Something a budget count went through: ``soft_limit``, ``exhausted``, ``downgraded``."""

    name: str
    budget: str
    scope: str
    unit: str
    used: float
    limit: float


@dataclass(frozen=True, slots=True)
class Admission:
    """What the budgets say about a request.

    ``refusal`` set: refuse it (its reservations are already released).
    ``downgrade_reason`` set: send it past its primary to the cheaper clusters after it.
    """

    holds: tuple[Hold, ...] = ()
    refusal: Rejection | None = None
    downgrade_reason: str | None = None
    events: tuple[BudgetEvent, ...] = ()


NOTHING_HELD = Admission()


@dataclass(frozen=True, slots=True)
class Spent:
    """What a finished request used (None: not reported), and whether an upstream answered."""

    tokens: int | None
    usd: float | None
    answered: bool

    def actual(self, hold: Hold) -> float:
        """What to settle ``hold`` at: the usage, else the estimate if answered, else 0."""
        value = self.tokens if hold.count.unit is BudgetUnit.TOKENS else self.usd
        if value is not None:
            return float(value)
        return hold.estimate if self.answered else 0.0


@dataclass(frozen=True, slots=True)
class _Downgrade:
    """Whether a request may be downgraded: it is non-critical, and its route allows it."""

    non_critical: bool
    possible: bool


@dataclass
class _Totals:
    requests: int = 0
    tokens: int = 0
    usd: float = 0.0

    def shown(self) -> dict[str, float]:
        return {"requests": self.requests, "tokens": self.tokens, "usd": _shown(self.usd)}


class Accounting:
    """Budgets and rate limits over one counter store."""

    def __init__(self, store: CounterStore, wall_clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._wall_clock = wall_clock
        self._settling: set[asyncio.Task[None]] = set()
        self.event_listeners: list[Callable[[BudgetEvent], None]] = []
        self.spend_by_tenant: dict[str, _Totals] = {}
        self.spend_by_team: dict[str, _Totals] = {}
        self._recent_jobs: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._count_cache: dict[
            tuple[int, TenantSpec, str | None], tuple[tuple[BudgetCount, ...], float, float]
        ] = {}

    # -- rate limits ---------------------------------------------------------------------

    async def check_rate(self, policy: Policy, tenant: TenantSpec, tokens: int) -> Rejection | None:
        """Count the request on the tenant's per-minute limits; a 429 if it is over one."""
        limit = policy.rate_limit_of(tenant)
        if limit is None:
            return None
        now = self._wall_clock()
        try:
            if limit.requests_per_minute is not None:
                decision = await self.store.hit(
                    f"rate:{tenant.tenant_id}:requests",
                    limit.requests_per_minute,
                    RATE_WINDOW_S,
                    now,
                )
                if not decision.allowed:
                    what = f"{limit.requests_per_minute} requests per minute for tenant "
                    return rate_limited(
                        f"{what}'{tenant.tenant_id}'", _whole_seconds(decision.retry_after_s)
                    )
            if limit.tokens_per_minute is not None and tokens > 0:
                return await self._check_tokens(tenant, limit.tokens_per_minute, tokens, now)
        except StoreUnavailable:
            log.warning("rate limit not checked: the store is unavailable")
        return None

    async def _check_tokens(
        self, tenant: TenantSpec, per_minute: int, tokens: int, now: float
    ) -> Rejection | None:
        if tokens > per_minute:
            return over_rate_limit_capacity(tokens, per_minute)
        key = f"rate:{tenant.tenant_id}:tokens"
        decision = await self.store.hit(key, per_minute, RATE_WINDOW_S, now, cost=tokens)
        if decision.allowed:
            return None
        what = f"{per_minute} tokens per minute for tenant '{tenant.tenant_id}'"
        return rate_limited(what, _whole_seconds(decision.retry_after_s))

    # -- budgets -------------------------------------------------------------------------

    async def admit(
        self,
        policy: Policy,
        tenant: TenantSpec,
        job: str | None,
        estimate: Estimate,
        non_critical: bool,
        can_downgrade: bool = True,
    ) -> Admission:
        """Reserve ``estimate`` on every budget count the request touches, and judge it.

        ``can_downgrade``: the request's route has clusters after its primary. Without
        them, a spent ``downgrade`` budget refuses the request like a ``refuse`` one, and
        non-critical work past a soft limit stays where it is.
        """
        if not policy.budgets:
            return NOTHING_HELD
        now = self._wall_clock()
        if job is not None:
            self._remember_job(tenant.tenant_id, job)
        counts = self._counts(policy.budgets, tenant, job, now)
        if not counts:
            return NOTHING_HELD
        try:
            replies = await self._reserve_all(counts, estimate, now)
        except StoreUnavailable:
            log.warning("budgets not checked: the store is unavailable")
            return NOTHING_HELD
        downgradable = _Downgrade(non_critical, can_downgrade)
        return await self._judge(counts, replies, estimate, downgradable, now)

    def _counts(
        self, budgets: tuple[BudgetSpec, ...], tenant: TenantSpec, job: str | None, now: float
    ) -> tuple[BudgetCount, ...]:
        """The counts of ``counts_for``, kept until the first of their windows ends.

        They depend only on the budgets, the tenant, the job and the window, and every
        request of a tenant asks for the same ones; building them (calendar arithmetic,
        key strings) costs more than the reservation itself.
        """
        key = (id(budgets), tenant, job)
        cached = self._count_cache.get(key)
        if cached is not None and cached[1] <= now < cached[2]:
            return cached[0]
        counts = counts_for(budgets, tenant, job, now)
        valid_until = min((c.period.resets_at for c in counts), default=now + 3600.0)
        if len(self._count_cache) >= MAX_CACHED_COUNTS:
            self._count_cache.clear()
        self._count_cache[key] = (counts, now, valid_until)
        return counts

    async def _reserve_all(
        self, counts: Sequence[BudgetCount], estimate: Estimate, now: float
    ) -> list[Reservation]:
        return await _all(
            [
                self.store.reserve(c.key, estimate.amount(c.unit), c.limit, c.ttl_s(now))
                for c in counts
            ]
        )

    async def _judge(
        self,
        counts: Sequence[BudgetCount],
        replies: Sequence[Reservation],
        estimate: Estimate,
        downgrade: _Downgrade,
        now: float,
    ) -> Admission:
        holds = [
            Hold(count, reply.id, estimate.amount(count.unit))
            for count, reply in zip(counts, replies, strict=True)
            if reply.granted and reply.id is not None
        ]
        events = [
            _event("soft_limit", count, reply)
            for count, reply in zip(counts, replies, strict=True)
            if reply.granted and _crossed_soft_limit(count, reply, estimate)
        ]
        spent = [(c, r) for c, r in zip(counts, replies, strict=True) if not r.granted]
        if spent:
            return await self._exhausted(holds, events, spent, estimate, downgrade, now)
        soft = [
            count for count, reply in zip(counts, replies, strict=True) if _past_soft(count, reply)
        ]
        reason = None
        if downgrade.non_critical and downgrade.possible and soft:
            reason = (
                f"budget '{soft[0].budget.name}' is past its soft limit; "
                "non-critical work moves to cheaper clusters"
            )
            events.append(_event("downgraded", soft[0], replies[counts.index(soft[0])]))
        self._announce(events)
        return Admission(tuple(holds), downgrade_reason=reason, events=tuple(events))

    async def _exhausted(
        self,
        holds: list[Hold],
        events: list[BudgetEvent],
        spent: list[tuple[BudgetCount, Reservation]],
        estimate: Estimate,
        downgrade: _Downgrade,
        now: float,
    ) -> Admission:
        events += [_event("exhausted", count, reply) for count, reply in spent]
        refusing = [(c, r) for c, r in spent if not (c.budget.downgrade and downgrade.possible)]
        if refusing:
            self._announce(events)
            await self._release(holds, now)
            blocking, reply = refusing[0]
            refusal = _refusal(blocking, reply, estimate.amount(blocking.unit), now)
            return Admission(refusal=refusal, events=tuple(events))
        # Every spent budget says downgrade: the request goes on, and still counts.
        first_count, first_reply = spent[0]
        events.append(_event("downgraded", first_count, first_reply))
        self._announce(events)
        for count, _ in spent:
            amount = estimate.amount(count.unit)
            reply = await self.store.reserve(count.key, amount, math.inf, count.ttl_s(now))
            if reply.id is not None:
                holds.append(Hold(count, reply.id, amount))
        reason = (
            f"budget '{first_count.budget.name}' of {_whose(first_count)} is spent; "
            "downgraded to cheaper clusters"
        )
        return Admission(tuple(holds), None, reason, tuple(events))

    async def _release(self, holds: Sequence[Hold], now: float) -> None:
        try:
            await _all(
                [
                    self.store.settle(h.count.key, h.reservation_id, 0.0, h.count.ttl_s(now))
                    for h in holds
                ]
            )
        except StoreUnavailable:
            log.warning("could not release budget reservations; they expire on their own")

    def _announce(self, events: Sequence[BudgetEvent]) -> None:
        for event in events:
            if event.name == "soft_limit":
                log.warning(
                    "budget '%s' of %s passed its soft limit",
                    event.budget,
                    event.scope,
                    extra={"used": event.used, "limit": event.limit, "unit": event.unit},
                )
            for listener in self.event_listeners:
                listener(event)

    # -- settling ------------------------------------------------------------------------

    def settle(self, admission: Admission, spent: Spent) -> None:
        """Replace the admission's reservations with what was used, in the background."""
        if not admission.holds:
            return
        task = asyncio.get_running_loop().create_task(self._settle(admission.holds, spent))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, holds: Sequence[Hold], spent: Spent) -> None:
        now = self._wall_clock()
        try:
            await _all(
                [
                    self.store.settle(
                        h.count.key, h.reservation_id, spent.actual(h), h.count.ttl_s(now)
                    )
                    for h in holds
                ]
            )
        except StoreUnavailable:
            log.warning("budget usage not settled: the store is unavailable")
        except Exception:
            log.exception("budget usage not settled")

    def record_spend(self, tenant: TenantSpec, tokens: int | None, usd: float | None) -> None:
        """Add a finished request's usage to this process's totals by tenant and team."""
        for totals in self._totals_of(tenant):
            totals.requests += 1
            totals.tokens += tokens or 0
            totals.usd += usd or 0.0

    def _totals_of(self, tenant: TenantSpec) -> list[_Totals]:
        found = [self.spend_by_tenant.setdefault(tenant.tenant_id, _Totals())]
        if tenant.team is not None:
            found.append(self.spend_by_team.setdefault(tenant.team, _Totals()))
        return found

    async def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for settlements still running (at shutdown)."""
        pending = list(self._settling)
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    @property
    def settling(self) -> int:
        return len(self._settling)

    # -- the state view ------------------------------------------------------------------

    def _remember_job(self, tenant: str, job: str) -> None:
        self._recent_jobs[(tenant, job)] = None
        self._recent_jobs.move_to_end((tenant, job))
        while len(self._recent_jobs) > MAX_JOBS_SHOWN:
            self._recent_jobs.popitem(last=False)

    async def view(self, policy: Policy) -> dict[str, Any]:
        """Budgets by name and scope (used, reserved, limit, reset), and this process's spend."""
        now = self._wall_clock()
        budgets: dict[str, Any] = {}
        for budget in policy.budgets:
            scopes = self._scopes_of(policy, budget)
            budgets[budget.name] = {
                "per": budget.per.value,
                "window": budget.window.value,
                "counts": await self._read_counts(budget, scopes, now),
            }
        return {
            "budgets": budgets,
            "spend_since_start": {
                "tenants": {k: v.shown() for k, v in sorted(self.spend_by_tenant.items())},
                "teams": {k: v.shown() for k, v in sorted(self.spend_by_team.items())},
            },
            "settling": self.settling,
            "store": self._store_state(),
        }

    def _store_state(self) -> dict[str, Any]:
        """Which store counts, and for a guarded shared one, its breaker and backlog."""
        if isinstance(self.store, GuardedStore):
            return {"kind": "redis", **self.store.snapshot()}
        return {"kind": "memory"}

    def _scopes_of(self, policy: Policy, budget: BudgetSpec) -> list[tuple[TenantSpec, str | None]]:
        tenants = sorted(policy.tenants.values(), key=lambda t: t.tenant_id)
        if budget.per is BudgetScope.JOB:
            return [
                (policy.tenants[tenant], job)  # type: ignore[index]
                for tenant, job in self._recent_jobs
                if tenant in policy.tenants
            ]
        if budget.per is BudgetScope.TEAM:
            first_of_team = {t.team: t for t in reversed(tenants) if t.team is not None}
            return [(tenant, None) for _, tenant in sorted(first_of_team.items())]
        return [(tenant, None) for tenant in tenants]

    async def _read_counts(
        self, budget: BudgetSpec, scopes: list[tuple[TenantSpec, str | None]], now: float
    ) -> dict[str, Any]:
        shown: dict[str, Any] = {}
        for tenant, job in scopes:
            for count in counts_for((budget,), tenant, job, now):
                try:
                    usage = await self.store.read(count.key)
                except StoreUnavailable:
                    shown.setdefault(count.scope, {})["error"] = "store unavailable"
                    continue
                shown.setdefault(count.scope, {"resets_at": format_reset(count.period.resets_at)})
                shown[count.scope][count.unit.value] = {
                    "used": _shown(usage.used),
                    "reserved": _shown(usage.reserved),
                    "limit": count.limit,
                }
        return shown


async def _all(calls: Sequence[Awaitable[_T]]) -> list[_T]:
    """Await store calls together; a single one directly, without ``gather``'s tasks."""
    if len(calls) == 1:
        return [await calls[0]]
    return list(await asyncio.gather(*calls))


def _crossed_soft_limit(count: BudgetCount, reply: Reservation, estimate: Estimate) -> bool:
    after = reply.used + reply.reserved
    before = after - estimate.amount(count.unit)
    return before < count.soft_limit <= after


def _past_soft(count: BudgetCount, reply: Reservation) -> bool:
    return reply.used + reply.reserved >= count.soft_limit


def _event(name: str, count: BudgetCount, reply: Reservation) -> BudgetEvent:
    return BudgetEvent(
        name,
        count.budget.name,
        _whose(count),
        count.unit.value,
        reply.used + reply.reserved,
        count.limit,
    )


def _whose(count: BudgetCount) -> str:
    per = count.budget.per
    if per is BudgetScope.JOB:
        tenant, _, job = count.scope.partition("/")
        return f"job '{job}' of tenant '{tenant}'"
    return f"{per.value} '{count.scope}'"


def _refusal(count: BudgetCount, reply: Reservation, asked: float, now: float) -> Rejection:
    """The 429 for a request that did not fit: the budget is spent, or has too little left."""
    used = reply.used + reply.reserved
    window = "daily" if count.budget.window is BudgetWindow.DAY else "monthly"
    resets_at = format_reset(count.period.resets_at)
    retry_after = _whole_seconds(count.period.resets_at - now)
    if used < count.limit:
        return budget_too_small(
            count.budget.name,
            _whose(count),
            window,
            _amount(count.unit, count.limit - used),
            _amount(count.unit, asked),
            resets_at,
            retry_after,
        )
    if count.unit is BudgetUnit.TOKENS:
        spent = f"{used:.0f} of {count.limit:.0f} tokens used or reserved"
    else:
        spent = f"${used:.4f} of ${count.limit:.2f} spent or reserved"
    return budget_exhausted(count.budget.name, _whose(count), spent, window, resets_at, retry_after)


def _amount(unit: BudgetUnit, value: float) -> str:
    return f"{value:.0f} tokens" if unit is BudgetUnit.TOKENS else f"${value:.4f}"


def _shown(amount: float) -> float:
    """An amount for people: sums of float prices lose their noise (0.1 + 0.2 is 0.3)."""
    return round(amount, 10)


def _whole_seconds(seconds: float) -> int:
    """A wait for Retry-After: whole seconds, at least 1."""
    if not math.isfinite(seconds):
        return 60
    return max(1, math.ceil(seconds))
