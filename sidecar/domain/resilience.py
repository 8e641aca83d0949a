"""Settings of the resilience machinery, as compiled from the policy.

The state machines that use them live in ``sidecar.core``; these are plain values.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How a breaker judges its cluster; see ``docs/resilience.md``."""

    window_kind: str = "count"
    """``count``: the last ``window_size`` calls; ``time``: calls of the last ``window_size`` s."""
    window_size: int = 20
    minimum_calls: int = 10
    failure_rate_threshold: float = 0.5
    slow_call_rate_threshold: float = 1.0
    slow_call_s: float = 10.0
    open_wait_s: float = 5.0
    max_open_wait_s: float = 120.0
    wait_multiplier: float = 2.0
    half_open_trials: int = 3


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Limits of one pool; see ``docs/resilience.md``."""

    name: str
    max_concurrent: int
    max_waiting: int = 0
    max_wait_s: float = 0.0
    min_wait_priority: int = 0
    per_tenant_max: int | None = None
    overflow: str | None = None
    overflow_min_priority: int = 0
    retry_after_s: int = 1
