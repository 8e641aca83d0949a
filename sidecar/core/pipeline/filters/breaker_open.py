"""Excludes clusters whose circuit breaker would refuse a call now."""

from sidecar.core.pipeline import Candidate, FleetView, PipelineRequest


class BreakerOpen:
    """Out: a cluster whose breaker is open, or half-open with every trial out."""

    def exclusion(
        self, candidate: Candidate, request: PipelineRequest, fleet: FleetView
    ) -> str | None:
        if fleet.breaker_admits(candidate.cluster.name, request.now):
            return None
        return "breaker open"
