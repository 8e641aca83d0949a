"""Canary and A/B routes as the policy states them: who goes where, and when to roll back."""

from dataclasses import dataclass

from sidecar.domain.ids import ClusterName

BASELINE = "baseline"
CANARY = "canary"
VARIANTS = (BASELINE, CANARY)

DEFAULT_WINDOW = 50
DEFAULT_MINIMUM_REQUESTS = 20
DEFAULT_MAX_ERROR_RATE_INCREASE = 0.10


@dataclass(frozen=True, slots=True)
class RollbackSpec:
    """When a canary is taken out on its own: judged over the last ``window`` requests."""

    window: int = DEFAULT_WINDOW
    minimum_requests: int = DEFAULT_MINIMUM_REQUESTS
    max_error_rate_increase: float = DEFAULT_MAX_ERROR_RATE_INCREASE
    """As a fraction (0.1: ten percentage points)."""
    max_latency_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class CanarySpec:
    """A share of a route's requests sent to ``cluster`` first, sticky per tenant or user."""

    cluster: ClusterName
    weight_percent: float
    sticky_user_header: str | None = None
    """Sticky per end user named by this header (else per tenant)."""
    rollback: RollbackSpec | None = None
