"""The record of one request: everything telemetry reports about it, as plain data.

Filled phase by phase by the processor (no I/O here); read once, when the stream ends,
by the tracing, metrics and logging sinks. Label-like fields hold only names from the
policy or fixed vocabularies, never raw client input, so metric label sets stay bounded.
"""

from dataclasses import dataclass, field
from typing import Any

UNKNOWN = "unknown"
"""The label used for a model, tier or cluster the policy does not name."""

OUTCOMES = (
    "routed",
    "rejected",
    "shed",
    "cache",
    "cost_cache",
    "degraded",
    "queued",
    "error",
    "cancelled",
)
"""How a request ended; ``routed`` means an upstream answered (any status)."""

ERROR_OUTCOMES = frozenset({"rejected", "shed", "error"})
"""Outcomes in which the sidecar answered with an error of its own (``error_code``)."""


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """Something that happened during the request: a fallback, a shed, a breaker move."""

    name: str
    attributes: dict[str, Any]
    at_s: float


@dataclass
class RequestRecord:
    """One request as telemetry sees it. Times are monotonic seconds."""

    started_at_s: float
    path: str
    api_family: str
    provider_name: str = UNKNOWN
    tenant: str | None = None
    tier: str | None = None
    team: str | None = None
    model: str | None = None
    """The virtual model asked for, only when the policy defines it."""
    cluster: str | None = None
    upstream_model: str | None = None
    response_model: str | None = None
    rung: str | None = None
    fallback_depth: int = 0
    reason: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    pool: str | None = None
    pool_in_use: int | None = None
    pool_capacity: int | None = None
    priority: int | None = None
    breaker_state: str | None = None
    outcome: str = "cancelled"
    error_code: str | None = None
    status: int | None = None
    stream: bool = False
    first_byte_at_s: float | None = None
    ended_at_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    variant: str | None = None
    """``canary`` or ``baseline`` on a route with a canary."""
    task: str | None = None
    """The task family of an objective-routed request."""
    objective_met: bool | None = None
    """Whether the cluster chosen met the model's objective (None: no objective)."""
    variant_failed: bool | None = None
    """Whether the variant's own cluster failed the request (None: not judged), even
    when another cluster then answered it."""
    cost_cache: str | None = None
    """``hit`` or ``miss`` when the cost cache was asked; None when it was not."""
    saved_usd: float | None = None
    """What a cost cache hit saved: the cost of the answer when a model wrote it."""
    budget_events: list[tuple[str, str]] = field(default_factory=list)
    """(budget, event) pairs: soft_limit, exhausted, downgraded."""
    events: list[RecordEvent] = field(default_factory=list)

    def event(self, name: str, at_s: float, **attributes: Any) -> None:
        """Note an event that happened at ``at_s``."""
        self.events.append(RecordEvent(name, attributes, at_s))

    @property
    def duration_s(self) -> float | None:
        """From the request's headers to the end of its stream."""
        if self.ended_at_s is None:
            return None
        return self.ended_at_s - self.started_at_s

    @property
    def time_to_first_byte_s(self) -> float | None:
        """From the request's headers to the first byte of the answer (its headers)."""
        if self.first_byte_at_s is None:
            return None
        return self.first_byte_at_s - self.started_at_s
