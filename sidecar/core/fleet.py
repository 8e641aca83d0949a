"""Live state of the fleet: a breaker and an in-flight count per cluster, and the pools.

One :class:`Fleet` per policy. It answers the pipeline's read-only questions
(:class:`sidecar.core.pipeline.FleetView`) and keeps the books when a call starts and
ends. Pure: ``now`` comes in from the caller; transitions go out as values and are
also kept (the most recent ones) for the admin view.
"""

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from sidecar.core.breaker import (
    FORCED_OPEN_RETRY_S,
    Admission,
    CallResult,
    CircuitBreaker,
    Permit,
    Transition,
)
from sidecar.core.bulkhead import PoolSet
from sidecar.core.canary import CanaryBoard
from sidecar.core.flags import FlagBoard
from sidecar.core.latency import LatencyBoard
from sidecar.core.slo import SloBoard
from sidecar.domain.ids import ClusterName, ModelName, TierName
from sidecar.domain.policy import Policy

RECENT_TRANSITIONS = 100


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A call under way to a cluster: the breaker's permit, or why there is none."""

    permit: Permit | None
    transitions: tuple[Transition, ...]


class Fleet:
    """Breakers, in-flight counts and bulkhead pools of one policy's clusters."""

    def __init__(self, policy: Policy) -> None:
        self.breakers = {
            name: CircuitBreaker(name, spec.breaker) for name, spec in policy.clusters.items()
        }
        self._limits = {name: spec.max_concurrent for name, spec in policy.clusters.items()}
        self._in_flight = dict.fromkeys(policy.clusters, 0)
        self.pools = PoolSet(list(policy.pools))
        self.flags = FlagBoard(policy.flags)
        self.latency = LatencyBoard(list(policy.clusters), policy.latency_window_s)
        self.slos = SloBoard(
            {name: spec.slo for name, spec in policy.models.items() if spec.slo is not None}
        )
        self.canaries = CanaryBoard(
            {
                (tier.name, model): route.canary
                for tier in policy.tiers.values()
                for model, route in tier.routes.items()
                if route.canary is not None
            }
        )
        self.recent_transitions: deque[Transition] = deque(maxlen=RECENT_TRANSITIONS)

    def carry_over(self, earlier: "Fleet") -> None:
        """Take over ``earlier``'s live state, for a policy that replaces its policy.

        A cluster that is still there with the same breaker settings keeps its breaker;
        in-flight counts are shared, so calls started under the earlier policy still
        count and still end in the count they started in; pools and flags carry over as
        :meth:`PoolSet.carry_over` and :meth:`FlagBoard.carry_over` say.
        """
        for name, breaker in self.breakers.items():
            kept = earlier.breakers.get(name)
            if kept is not None and kept.config == breaker.config:
                self.breakers[name] = kept
        for name in self._in_flight:
            earlier._in_flight.setdefault(name, 0)
        self._in_flight = earlier._in_flight
        self.pools.carry_over(earlier.pools)
        if earlier.flags.specs == self.flags.specs:
            self.flags = earlier.flags  # shared: a switch from either runtime counts for both
        else:
            self.flags.carry_over(earlier.flags)
        self.canaries.carry_over(earlier.canaries)
        self.slos.carry_over(earlier.slos)
        self.latency.carry_over(earlier.latency)
        self.recent_transitions = earlier.recent_transitions

    def breaker_admits(self, cluster: ClusterName, now: float) -> bool:
        return self.breakers[cluster].would_admit(now)

    def cluster_full(self, cluster: ClusterName) -> bool:
        limit = self._limits[cluster]
        return limit is not None and self._in_flight[cluster] >= limit

    def killed_by(self, cluster: ClusterName) -> str | None:
        return self.flags.killed_by(cluster)

    def downgraded_by(self, tier: TierName, model: ModelName) -> str | None:
        return self.flags.downgraded_by(tier, model)

    def latency_p95(self, cluster: ClusterName, now: float, min_samples: int = 1) -> float | None:
        """The cluster's live p95 of total time; None with fewer than ``min_samples``."""
        summary = self.latency.summary(cluster, now)
        return summary.total_p95 if summary.samples >= min_samples else None

    def canary_weight(self, tier: TierName, model: ModelName) -> float:
        return self.canaries.weight((tier, model))

    def start_call(self, cluster: ClusterName, now: float) -> CallStarted:
        """Take the breaker's permit and count the call in flight."""
        admission: Admission = self.breakers[cluster].admit(now)
        self._keep(admission.transitions)
        if admission.permit is not None:
            self._in_flight[cluster] += 1
        return CallStarted(admission.permit, admission.transitions)

    def finish_call(
        self, permit: Permit, result: CallResult | None, now: float
    ) -> tuple[Transition, ...]:
        """End a call: count its outcome (None: it ended without one)."""
        self._in_flight[permit.cluster] -= 1
        breaker = self.breakers[permit.cluster]
        if result is None:
            breaker.abandon(permit)
            return ()
        transitions = breaker.record(permit, result, now)
        self._keep(transitions)
        return transitions

    def seconds_until_any_admits(
        self, skipped: tuple[tuple[ClusterName, str], ...], now: float
    ) -> int:
        """Whole seconds until the soonest of these clusters' breakers lets a call try."""
        waits = [
            self.breakers[cluster].open_until - now
            for cluster, _ in skipped
            if cluster in self.breakers
        ]
        soonest = min((wait for wait in waits if wait > 0), default=1.0)
        if math.isinf(soonest):
            soonest = FORCED_OPEN_RETRY_S  # held open by an operator: no set end
        return max(1, math.ceil(soonest))

    def snapshot(self, now: float) -> dict[str, Any]:
        """Breakers, load, live latency and pools as plain data, for the admin state view."""
        latency = self.latency.snapshot(now)
        clusters = {}
        for name, breaker in self.breakers.items():
            calls, failure_rate, slow_rate = breaker.rates(now)
            clusters[name] = {
                "breaker": breaker.state.value,
                "reason": breaker.last_reason,
                "window_calls": calls,
                "failure_rate": round(failure_rate, 4),
                "slow_call_rate": round(slow_rate, 4),
                "open_for_s": _open_for(breaker.open_until, now),
                "consecutive_trips": breaker.consecutive_trips,
                "forced": breaker.forced.value if breaker.forced is not None else None,
                "in_flight": self._in_flight[name],
                "max_concurrent": self._limits[name],
                "latency": latency[name],
            }
        return {
            "clusters": clusters,
            "pools": self.pools.snapshot(),
            "recent_transitions": [
                {
                    "cluster": t.cluster,
                    "from": t.old.value,
                    "to": t.new.value,
                    "reason": t.reason,
                    "at": round(t.at, 3),
                }
                for t in self.recent_transitions
            ],
        }

    def _keep(self, transitions: tuple[Transition, ...]) -> None:
        self.recent_transitions.extend(transitions)


def _open_for(open_until: float, now: float) -> float | None:
    """Seconds left in the open state (None: held open by an operator, no set end)."""
    if math.isinf(open_until):
        return None
    return round(max(open_until - now, 0.0), 3)
