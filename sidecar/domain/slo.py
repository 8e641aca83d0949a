"""A virtual model's service level objective, as the policy states it."""

from dataclasses import dataclass

DEFAULT_SHORT_WINDOW_S = 300.0
DEFAULT_LONG_WINDOW_S = 3600.0
DEFAULT_BURN_RATE = 14.4
DEFAULT_MINIMUM_REQUESTS = 20


@dataclass(frozen=True, slots=True)
class SloSpec:
    """Availability (and latency) objective, its burn windows, and the flag it drives."""

    objective: float
    """The good fraction required, e.g. 0.995."""
    flag: str
    latency_s: float | None = None
    short_window_s: float = DEFAULT_SHORT_WINDOW_S
    long_window_s: float = DEFAULT_LONG_WINDOW_S
    burn_rate: float = DEFAULT_BURN_RATE
    minimum_requests: int = DEFAULT_MINIMUM_REQUESTS
