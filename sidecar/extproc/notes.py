"""Taking notes on a request for telemetry, phase by phase.

:class:`RequestNotes` fills the request's :class:`~sidecar.telemetry.record.RequestRecord`
from what the processor learns (tenant, pool, decision, answer, usage, breaker moves)
and hands Envoy the decision for its access log. Before :meth:`RequestNotes.begin` (a
path that is not the sidecar's) every note is a no-op.
"""

from typing import Any

from sidecar.core.answer_cache import CachedAnswer
from sidecar.core.breaker import Transition
from sidecar.core.bulkhead import Slot
from sidecar.domain.ids import ClusterName
from sidecar.domain.outcome import Decision, Rejection
from sidecar.domain.policy import ClusterSpec, TenantSpec
from sidecar.engine.accounting import BudgetEvent
from sidecar.engine.runtime import RoutingRuntime, Shed
from sidecar.extproc.answer_watch import AnswerWatch
from sidecar.telemetry.record import UNKNOWN, RequestRecord


class RequestNotes:
    """The record of one request, and the notes that fill it."""

    def __init__(self, runtime: RoutingRuntime) -> None:
        self._runtime = runtime
        self.record: RequestRecord | None = None

    def begin(self, path: str, api_family: str) -> None:
        self.record = RequestRecord(self._runtime.clock.now(), path, api_family)

    def tenant(self, tenant: TenantSpec) -> None:
        if self.record is not None:
            self.record.tenant = tenant.tenant_id
            self.record.tier = tenant.tier
            self.record.team = tenant.team

    def body(self, model: str, stream: bool) -> None:
        record = self.record
        if record is None:
            return
        record.stream = stream
        known = model in self._runtime.active.policy.models
        record.model = model if known else UNKNOWN

    def pool(self, pool: str, priority: int, admitted: Slot | Shed) -> None:
        record = self.record
        if record is None:
            return
        record.pool = pool
        record.priority = priority
        record.pool_in_use, record.pool_capacity = self._runtime.fleet.pools.occupancy(pool)
        if isinstance(admitted, Shed):
            record.outcome = "shed"
            record.event("shed", self._runtime.clock.now(), pool=pool, reason=admitted.reason)

    def decision(self, decision: Decision) -> None:
        record = self.record
        if record is None:
            return
        cluster = self._runtime.active.policy.clusters[decision.cluster]
        record.cluster = decision.cluster
        record.upstream_model = cluster.upstream_model or None
        record.provider_name = cluster.provider.value
        record.rung = decision.rung
        record.fallback_depth = decision.fallback_depth
        record.reason = decision.reason
        record.skipped = [(str(name), why) for name, why in decision.skipped]
        record.breaker_state = self._runtime.fleet.breakers[decision.cluster].state.value
        record.variant = decision.variant
        record.objective_met = decision.objective_met
        if decision.objective_met is False:
            record.event("objective_missed", self._runtime.clock.now(), reason=decision.reason)
        now = self._runtime.clock.now()
        for name, why in decision.skipped:
            record.event("fallback", now, from_cluster=str(name), reason=why)

    def transitions(self, transitions: tuple[Transition, ...]) -> None:
        record = self.record
        if record is None:
            return
        for transition in transitions:
            record.event(
                "breaker_transition",
                transition.at,
                cluster=str(transition.cluster),
                from_state=transition.old.value,
                to_state=transition.new.value,
                reason=transition.reason,
            )

    def answered_here(self, status: int, rung: str) -> None:
        """The sidecar answered itself from the ladder (cache, degraded, queued)."""
        if self.record is not None:
            self.record.outcome = rung
            self.record.rung = rung
            self.record.status = status

    def failed(self, code: str) -> None:
        if self.record is not None:
            self.record.outcome = "error"
            self.record.error_code = code
            self.record.status = 500

    def rejected(self, rejection: Rejection) -> None:
        record = self.record
        if record is None:
            return
        if record.outcome != "shed":
            record.outcome = "rejected"
            record.event("rejected", self._runtime.clock.now(), code=rejection.code)
        record.error_code = rejection.code
        record.status = rejection.status

    def answer(self, status: int, rung: str, served: ClusterSpec | None) -> None:
        """An upstream answered: its status, and which cluster it was."""
        record = self.record
        if record is None:
            return
        record.status = status
        record.first_byte_at_s = self._runtime.clock.now()
        record.outcome = "routed"
        record.rung = rung
        if served is not None and served.name != record.cluster:
            record.event(
                "fallback",
                record.first_byte_at_s,
                from_cluster=record.cluster or "",
                reason="failed over inside the request",
            )
            record.cluster = served.name
            record.upstream_model = served.upstream_model or None
            record.provider_name = served.provider.value
            record.fallback_depth = max(record.fallback_depth, 1)

    def usage(self, watch: AnswerWatch) -> None:
        record = self.record
        if record is None or watch.usage is None:
            return
        record.input_tokens = watch.usage.input_tokens
        record.output_tokens = watch.usage.output_tokens
        record.response_model = watch.response_model
        if record.cluster is None:
            return
        cluster = self._runtime.active.policy.clusters.get(ClusterName(record.cluster))
        price = cluster.price if cluster is not None else None
        if price is not None:
            record.cost_usd = price.cost_usd(watch.usage.input_tokens, watch.usage.output_tokens)

    def task(self, task: str) -> None:
        if self.record is not None:
            self.record.task = task

    def variant_outcome(self, decision: Decision) -> None:
        """Tell the canary judge how the request's variant did; note a rollback it causes."""
        record = self.record
        if record is None:
            return
        outcome = self._runtime.canary_outcome(
            decision, record.cluster, record.status, record.time_to_first_byte_s
        )
        if outcome is None:
            return
        record.variant_failed = outcome.failed
        if outcome.rolled_back is not None:
            reason = outcome.rolled_back.reason
            record.event("canary_rolled_back", self._runtime.clock.now(), reason=reason)

    def cost_usd(self) -> float | None:
        """What the answer cost: None before its usage is known or if it is not priced."""
        return self.record.cost_usd if self.record is not None else None

    def cost_cache(self, hit: CachedAnswer | None) -> None:
        """The cost cache was asked for this request's answer."""
        record = self.record
        if record is None:
            return
        record.cost_cache = "miss" if hit is None else "hit"
        if hit is not None:
            record.saved_usd = hit.cost_usd

    def budget_events(self, events: tuple[BudgetEvent, ...]) -> None:
        record = self.record
        if record is None or not events:
            return
        now = self._runtime.clock.now()
        for event in events:
            record.event(
                f"budget_{event.name}",
                now,
                budget=event.budget,
                scope=event.scope,
                unit=event.unit,
                used=event.used,
                limit=event.limit,
            )
            record.budget_events.append((event.budget, event.name))

    def log_fields(self) -> dict[str, Any]:
        """The decision, for Envoy's access log (dynamic metadata ``ai.sidecar``)."""
        record = self.record
        if record is None:
            return {}
        fields = {
            "tenant": record.tenant,
            "tier": record.tier,
            "model": record.model,
            "cluster": record.cluster,
            "rung": record.rung,
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "cost_usd": record.cost_usd,
        }
        return {name: value for name, value in fields.items() if value is not None}

    def end(self) -> RequestRecord | None:
        """The finished record (once), or None if the request was not the sidecar's."""
        record, self.record = self.record, None
        if record is not None:
            record.ended_at_s = self._runtime.clock.now()
        return record
