"""The cost side of one request: the cost cache, rate limits, budgets and settling.

A :class:`CostControl` belongs to one request's processor. In the body phase it answers
from the cost cache when it can (:meth:`CostControl.cached_answer`), else counts the
request on its tenant's rate limits and budgets (:meth:`CostControl.admit`); when the
answer has come, it keeps it for the cost cache (:meth:`CostControl.keep_answer`); when
the stream ends, it settles the budget reservations with what was really used
(:meth:`CostControl.settle`).
"""

import re
from collections.abc import Mapping

from sidecar.core.answer_cache import CachedAnswer, exact_key
from sidecar.core.budgets import estimate
from sidecar.domain.accounting import JobsSpec
from sidecar.domain.api import Endpoint
from sidecar.domain.ids import ModelName
from sidecar.domain.outcome import Rejection, invalid_job_id
from sidecar.domain.policy import Policy, RouteSpec, TenantSpec
from sidecar.engine.accounting import NOTHING_HELD, Spent
from sidecar.engine.runtime import RoutingRuntime
from sidecar.extproc.notes import RequestNotes
from sidecar.providers.body import RequestBody
from sidecar.providers.request_facts import answer_is_fixed, max_output_tokens
from sidecar.providers.usage import Usage

_JOB_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def job_of(headers: Mapping[str, str], jobs: JobsSpec | None) -> str | Rejection | None:
    """The job id the request names (None: no job), or the 400 for one that cannot be."""
    value = headers.get(jobs.header) if jobs is not None else None
    if value is None or jobs is None:
        return None
    return value if _JOB_ID.fullmatch(value) else invalid_job_id(jobs.header)


def route_of(policy: Policy, tenant: TenantSpec, model: str) -> RouteSpec | None:
    """The tenant's route for ``model`` (None: routing will refuse the request)."""
    tier = policy.tiers.get(tenant.tier)
    return tier.routes.get(ModelName(model)) if tier is not None else None


class CostControl:
    """Cost cache, limits, budgets and settling for one request of ``tenant``."""

    def __init__(
        self, runtime: RoutingRuntime, notes: RequestNotes, tenant: TenantSpec, job: str | None
    ) -> None:
        self._runtime = runtime
        self._notes = notes
        self._tenant = tenant
        self._job = job
        self._admission = NOTHING_HELD
        self._cache_key: str | None = None
        self.downgrade_reason: str | None = None
        """Set when a budget sends the request past its primary, and why."""

    def cached_answer(self, endpoint: Endpoint, body: RequestBody) -> CachedAnswer | None:
        """The cost cache's answer to a request whose answer is fixed, else None.

        On a miss the request's key is kept, so its answer can be stored when it comes.
        """
        policy = self._runtime.active.policy
        model = ModelName(body.model)
        spec = policy.models[model].cost_cache if model in policy.models else None
        cache = self._runtime.cost_cache_for(model)
        if spec is None or cache is None or route_of(policy, self._tenant, model) is None:
            return None
        if not answer_is_fixed(endpoint, body, spec.deterministic_chat):
            return None
        tenant = self._tenant
        scope = f"tier:{tenant.tier}" if spec.shared else f"tenant:{tenant.tenant_id}"
        key = exact_key(scope, model, body.document)
        hit = cache.get(key, self._runtime.clock.now())
        self._notes.cost_cache(hit)
        if hit is None:
            self._cache_key = key
        return hit

    async def admit(
        self, endpoint: Endpoint, body: RequestBody, body_bytes: int
    ) -> Rejection | None:
        """Count the request on its tenant's rate limits and budgets; a refusal, or None."""
        policy = self._runtime.active.policy
        if not policy.budgets and policy.rate_limit_of(self._tenant) is None:
            return None
        accounting = self._runtime.accounting
        if endpoint is Endpoint.JSON_SERVICE:
            # A JSON service uses no tokens: only its requests per minute count.
            return await accounting.check_rate(policy, self._tenant, 0)
        route = route_of(policy, self._tenant, body.model)
        chain = [policy.clusters[name] for name in route.chain] if route is not None else []
        output = max_output_tokens(endpoint, body, policy.assumed_max_tokens)
        cost = estimate(body_bytes, output, chain)
        limited = await accounting.check_rate(policy, self._tenant, cost.tokens)
        if limited is not None:
            return limited
        can_downgrade = route is not None and len(route.chain) > 1
        admission = await accounting.admit(
            policy, self._tenant, self._job, cost, self._non_critical(policy, route), can_downgrade
        )
        self._admission = admission
        self._notes.budget_events(admission.events)
        self.downgrade_reason = admission.downgrade_reason
        return admission.refusal

    def _non_critical(self, policy: Policy, route: RouteSpec | None) -> bool:
        if route is not None and route.non_critical:
            return True
        return self._job is not None and policy.jobs is not None and policy.jobs.non_critical

    def forget_answer(self) -> None:
        """The answer will not be kept (an error, or streamed)."""
        self._cache_key = None

    def keep_answer(self, model: str, body: bytes) -> None:
        """Keep a whole answer for the cost cache, if the request was looked up there."""
        key, self._cache_key = self._cache_key, None
        cache = self._runtime.cost_cache_for(ModelName(model))
        if key is None or cache is None:
            return
        now = self._runtime.clock.now()
        cache.put(key, CachedAnswer("", "", now, raw=body, cost_usd=self._notes.cost_usd()))

    def settle(self, usage: Usage | None, upstream_status: int | None) -> None:
        """Settle the budget reservations with what was used; add it to the spend totals."""
        tokens = usage.input_tokens + usage.output_tokens if usage is not None else None
        answered = upstream_status is not None and upstream_status < 400
        usd = self._notes.cost_usd()
        if usd is None and tokens is not None:
            usd = 0.0  # the cluster that answered has no price: it cost nothing
        spent = Spent(tokens, usd, answered)
        accounting = self._runtime.accounting
        admission, self._admission = self._admission, NOTHING_HELD
        accounting.settle(admission, spent)
        if upstream_status is not None:
            accounting.record_spend(self._tenant, tokens, spent.usd)
