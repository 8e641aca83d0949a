"""Canary and A/B routing: which variant a request takes, and when a canary rolls back.

:func:`variant_of` puts a request in the canary when a hash of its route and sticky key
(tenant, or end user) falls under the canary's weight: the same key always lands on the
same side, and raising the weight only moves keys from the baseline to the canary.

:class:`CanaryBoard` holds the weights in force (the policy's, or an operator's, or 0
after a rollback) and judges each canary route over the last requests of each variant:
when the canary's error rate is higher than the baseline's by more than the policy
allows, or its p95 latency is more than the allowed multiple, its weight goes to 0 and
a :class:`RolledBack` says why. Pure: ``now`` comes from the caller.
"""

import hashlib
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sidecar.domain.canary import BASELINE, CANARY, VARIANTS, CanarySpec, RollbackSpec
from sidecar.domain.ids import ModelName, TierName

BUCKETS = 10_000

RouteKey = tuple[TierName, ModelName]


def variant_of(route: RouteKey, sticky_key: str, weight_percent: float) -> str:
    """``canary`` or ``baseline`` for requests of ``sticky_key`` on ``route``."""
    if weight_percent <= 0:
        return BASELINE
    material = f"{route[0]}/{route[1]}/{sticky_key}".encode()
    bucket = int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "big") % BUCKETS
    return CANARY if bucket < weight_percent * BUCKETS / 100 else BASELINE


@dataclass(frozen=True, slots=True)
class RolledBack:
    """A canary taken out on its own: which route, why, and when."""

    route: RouteKey
    reason: str
    at: float


@dataclass
class _Window:
    """The last requests of one variant: whether each failed, and its latency."""

    size: int
    outcomes: deque[tuple[bool, float]] = field(init=False)

    def __post_init__(self) -> None:
        self.outcomes = deque(maxlen=self.size)

    @property
    def error_rate(self) -> float:
        if not self.outcomes:
            return 0.0
        return sum(1 for failed, _ in self.outcomes if failed) / len(self.outcomes)

    def p95(self) -> float:
        latencies = sorted(latency for _, latency in self.outcomes)
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)]


@dataclass
class _Route:
    spec: CanarySpec
    weight: float
    set_by: str = "policy"
    rolled_back: RolledBack | None = None
    windows: dict[str, _Window] = field(default_factory=dict)


class CanaryBoard:
    """The canary routes of one policy: weights in force and their judges."""

    def __init__(self, canaries: dict[RouteKey, CanarySpec]) -> None:
        self._routes = {
            key: _Route(spec, spec.weight_percent, windows=_windows(spec))
            for key, spec in canaries.items()
        }

    def weight(self, route: RouteKey) -> float:
        """The canary's share of ``route`` now, in percent (0 when there is none)."""
        state = self._routes.get(route)
        return state.weight if state is not None else 0.0

    def set_weight(self, route: RouteKey, weight_percent: float, actor: str) -> None:
        """An operator's weight; putting a rolled-back canary back is done this way."""
        state = self._routes[route]
        state.weight, state.set_by, state.rolled_back = weight_percent, actor, None
        state.windows = _windows(state.spec)

    def observe(
        self, route: RouteKey, variant: str, failed: bool, latency_s: float, now: float
    ) -> RolledBack | None:
        """Count one request's outcome; a rollback when the canary just failed its trial."""
        state = self._routes.get(route)
        if state is None or state.spec.rollback is None or state.weight <= 0:
            return None
        state.windows[variant].outcomes.append((failed, latency_s))
        reason = _verdict(state.spec.rollback, state.windows)
        if reason is None:
            return None
        state.weight, state.set_by = 0.0, "rollback"
        state.rolled_back = RolledBack(route, reason, now)
        return state.rolled_back

    def carry_over(self, earlier: "CanaryBoard") -> None:
        """Keep weights, rollbacks and windows of canaries that did not change."""
        for key, state in self._routes.items():
            kept = earlier._routes.get(key)
            if kept is not None and kept.spec == state.spec:
                self._routes[key] = kept

    def snapshot(self) -> dict[str, Any]:
        return {
            f"{tier}/{model}": _describe(state) for (tier, model), state in self._routes.items()
        }


def _windows(spec: CanarySpec) -> dict[str, _Window]:
    size = spec.rollback.window if spec.rollback is not None else 1
    return {variant: _Window(size) for variant in VARIANTS}


def _verdict(rollback: RollbackSpec, windows: dict[str, _Window]) -> str | None:
    canary, baseline = windows[CANARY], windows[BASELINE]
    enough = rollback.minimum_requests
    if len(canary.outcomes) < enough or len(baseline.outcomes) < enough:
        return None
    increase = canary.error_rate - baseline.error_rate
    if increase > rollback.max_error_rate_increase:
        return (
            f"error rate {canary.error_rate:.0%} against the baseline's "
            f"{baseline.error_rate:.0%} over the last {len(canary.outcomes)} requests "
            f"(at most {rollback.max_error_rate_increase:.0%} points more allowed)"
        )
    ratio = rollback.max_latency_ratio
    base_p95 = baseline.p95()
    if ratio is not None and base_p95 > 0 and canary.p95() > ratio * base_p95:
        return (
            f"p95 latency {canary.p95() * 1000:.0f} ms against the baseline's "
            f"{base_p95 * 1000:.0f} ms (at most {ratio:g} times allowed)"
        )
    return None


def _describe(state: _Route) -> dict[str, Any]:
    view: dict[str, Any] = {
        "cluster": state.spec.cluster,
        "weight_percent": state.weight,
        "policy_weight_percent": state.spec.weight_percent,
        "set_by": state.set_by,
        "variants": {
            variant: {"requests": len(window.outcomes), "error_rate": round(window.error_rate, 4)}
            for variant, window in state.windows.items()
        },
    }
    if state.rolled_back is not None:
        view["rolled_back"] = {"reason": state.rolled_back.reason, "at": state.rolled_back.at}
    return view
