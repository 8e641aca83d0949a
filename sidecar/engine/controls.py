"""Operators' and the sidecar's own controls over routing at run time.

:class:`RuntimeControls` is the part of :class:`~sidecar.engine.runtime.RoutingRuntime`
that switches flags, holds breakers, sets canary weights, and feeds the canary and
SLO judges that may switch things on their own. Every change is logged with who made
it and why, and told to the runtime's listeners (the metrics).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.core.breaker import BreakerState, Transition
from sidecar.core.canary import RolledBack
from sidecar.core.clock import Clock
from sidecar.core.flags import FlagChange
from sidecar.core.fleet import Fleet
from sidecar.core.router import ActivePolicy
from sidecar.core.slo import request_was_bad
from sidecar.domain.ids import ClusterName, ModelName, TierName
from sidecar.domain.outcome import Decision

log = logging.getLogger("sidecar.resilience")


@dataclass(frozen=True, slots=True)
class VariantOutcome:
    """How a request of a canary route went for its variant, and a rollback it caused."""

    failed: bool
    rolled_back: RolledBack | None


class RuntimeControls:
    """Flags, breaker holds, canary weights and the judges; mixed into the runtime."""

    active: ActivePolicy
    clock: Clock
    fleet: Fleet
    wall_clock: Callable[[], float]
    flag_listeners: list[Callable[[FlagChange], None]]
    rollback_listeners: list[Callable[[RolledBack], None]]

    def _log_transitions(self, transitions: tuple[Transition, ...]) -> None:
        raise NotImplementedError

    def set_flag(
        self, name: str, on: bool, actor: str, reason: str, source: str = "api"
    ) -> FlagChange:
        """Switch a flag (``UnknownFlagError`` if none has that name), logged with who and why.

        The change also goes to every flag listener (the metrics).
        """
        change = self.fleet.flags.set(name, on, actor, reason, self.wall_clock(), source)
        log.warning(
            "flag %s switched %s by %s: %s",
            name,
            "on" if on else "off",
            actor,
            reason,
            extra={"flag": name, "on": on, "was_on": change.was_on, "source": source},
        )
        for listener in self.flag_listeners:
            listener(change)
        return change

    def canary_outcome(
        self,
        decision: Decision,
        served: str | None,
        status: int | None,
        latency_s: float | None,
    ) -> VariantOutcome | None:
        """Judge a finished request of a canary route (None: it says nothing of its variant).

        A request counts when its variant's first cluster was chosen (it failed when
        another cluster answered, a server error came back, or nothing did) or was
        skipped because its breaker is open (a failure too). Requests passed over by a
        flag or a budget, or skipped for a full cluster, say nothing about the variant.
        """
        if decision.variant is None:
            return None
        failed: bool
        if decision.fallback_depth == 0:
            failed = served != decision.cluster or status is None or status >= 500
        elif decision.skipped and decision.skipped[0][1] == "breaker open":
            failed = True
        else:
            return None
        route = (decision.tier, decision.requested_model)
        rolled = self.fleet.canaries.observe(
            route, decision.variant, failed, latency_s or 0.0, self.wall_clock()
        )
        if rolled is not None:
            self._announce_rollback(decision, rolled)
        return VariantOutcome(failed, rolled)

    def _announce_rollback(self, decision: Decision, rolled: RolledBack) -> None:
        log.error(
            "canary of %s/%s rolled back: %s",
            decision.tier,
            decision.requested_model,
            rolled.reason,
            extra={"tier": decision.tier, "model": decision.requested_model},
        )
        for listener in self.rollback_listeners:
            listener(rolled)

    def slo_outcome(
        self, model: str | None, outcome: str, status: int | None, ttfb_s: float | None
    ) -> None:
        """Count a finished request against its model's SLO; switch the SLO's flag if due."""
        spec = self.active.policy.models.get(ModelName(model)) if model else None
        if spec is None or spec.slo is None:
            return
        bad = request_was_bad(outcome, status, ttfb_s, spec.slo.latency_s)
        if bad is None:
            return
        verdict = self.fleet.slos.observe(ModelName(model or ""), bad, self.clock.now())
        if verdict is not None and verdict.flag in self.active.policy.flags:
            self.set_flag(verdict.flag, verdict.on, f"slo/{verdict.model}", verdict.reason, "slo")

    def force_breaker(self, cluster: str, state: str, actor: str, reason: str) -> None:
        """Hold a cluster's breaker ``open`` or ``closed``, or let it judge (``auto``).

        Raises ``KeyError`` for a cluster the policy lacks, ``ValueError`` for a state.
        """
        breaker = self.fleet.breakers[ClusterName(cluster)]
        held = {"open": BreakerState.OPEN, "closed": BreakerState.CLOSED, "auto": None}
        if state not in held:
            raise ValueError(f"state must be open, closed or auto, not {state!r}")
        why = f"{'released' if state == 'auto' else 'held ' + state} by {actor}: {reason}"
        transitions = breaker.force(held[state], why, self.clock.now())
        self._log_transitions(transitions)
        log.warning(
            "breaker %s %s",
            cluster,
            why,
            extra={"cluster": cluster, "forced": state, "actor": actor},
        )

    def set_canary_weight(
        self, tier: str, model: str, weight_percent: float, actor: str, reason: str
    ) -> None:
        """An operator's canary weight (``KeyError`` when the route has no canary)."""
        route = (TierName(tier), ModelName(model))
        self.fleet.canaries.set_weight(route, weight_percent, actor)
        log.warning(
            "canary weight of %s/%s set to %g%% by %s: %s",
            tier,
            model,
            weight_percent,
            actor,
            reason,
            extra={"tier": tier, "model": model, "weight_percent": weight_percent},
        )
