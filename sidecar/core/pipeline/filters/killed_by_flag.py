"""Excludes clusters that a feature flag (a kill switch) keeps out."""

from sidecar.core.pipeline import Candidate, FleetView, PipelineRequest


class KilledByFlag:
    """Out: a cluster named by a kill-switch flag that is on."""

    def exclusion(
        self, candidate: Candidate, request: PipelineRequest, fleet: FleetView
    ) -> str | None:
        flag = fleet.killed_by(candidate.cluster.name)
        return f"killed by flag '{flag}'" if flag is not None else None
