"""The candidate pipeline: which clusters of a chain may take a request, and which does.

A request's candidates are the clusters of its tier's chain for the virtual model, in
order. Each filter (one per file in ``filters/``) may exclude a candidate and says
why; the picker chooses among those left. Adding a routing rule means adding a filter
(or a picker) and listing it in ``DEFAULT_FILTERS``.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sidecar.domain.api import Endpoint
from sidecar.domain.ids import ClusterName, ModelName, TierName
from sidecar.domain.policy import ClusterSpec


@dataclass(frozen=True, slots=True)
class Candidate:
    """A cluster of the chain, and its place in it (0 is the primary)."""

    cluster: ClusterSpec
    depth: int


@dataclass(frozen=True, slots=True)
class PipelineRequest:
    """What filters may look at: the endpoint called and the time of the decision."""

    endpoint: Endpoint
    now: float


class FleetView(Protocol):
    """Read-only live state of the clusters, as filters see it."""

    def breaker_admits(self, cluster: ClusterName, now: float) -> bool: ...

    def cluster_full(self, cluster: ClusterName) -> bool: ...

    def killed_by(self, cluster: ClusterName) -> str | None: ...

    def downgraded_by(self, tier: TierName, model: ModelName) -> str | None: ...

    def canary_weight(self, tier: TierName, model: ModelName) -> float: ...

    def latency_p95(
        self, cluster: ClusterName, now: float, min_samples: int = 1
    ) -> float | None: ...


class CandidateFilter(Protocol):
    """Excludes candidates that must not take the request."""

    def exclusion(
        self, candidate: Candidate, request: PipelineRequest, fleet: FleetView
    ) -> str | None:
        """Why ``candidate`` is out (a few words), or None if it stays in."""
        ...


@dataclass(frozen=True, slots=True)
class Filtered:
    """Candidates left after the filters, and those excluded with the reason."""

    remaining: tuple[Candidate, ...]
    skipped: tuple[tuple[ClusterName, str], ...]


def apply_filters(
    candidates: Sequence[Candidate],
    filters: Sequence[CandidateFilter],
    request: PipelineRequest,
    fleet: FleetView,
) -> Filtered:
    """Run every candidate through the filters; the first exclusion counts."""
    remaining: list[Candidate] = []
    skipped: list[tuple[ClusterName, str]] = []
    for candidate in candidates:
        reason = _first_exclusion(candidate, filters, request, fleet)
        if reason is None:
            remaining.append(candidate)
        else:
            skipped.append((candidate.cluster.name, reason))
    return Filtered(tuple(remaining), tuple(skipped))


def _first_exclusion(
    candidate: Candidate,
    filters: Sequence[CandidateFilter],
    request: PipelineRequest,
    fleet: FleetView,
) -> str | None:
    for candidate_filter in filters:
        reason = candidate_filter.exclusion(candidate, request, fleet)
        if reason is not None:
            return reason
    return None
