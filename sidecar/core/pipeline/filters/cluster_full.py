"""Excludes clusters that already have their maximum of requests in flight."""

from sidecar.core.pipeline import Candidate, FleetView, PipelineRequest


class ClusterFull:
    """Out: a cluster at its ``max_concurrent``."""

    def exclusion(
        self, candidate: Candidate, request: PipelineRequest, fleet: FleetView
    ) -> str | None:
        if fleet.cluster_full(candidate.cluster.name):
            return "at its concurrency limit"
        return None
