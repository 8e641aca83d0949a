"""Excludes clusters whose servers do not speak the API the client called."""

from sidecar.core.pipeline import Candidate, FleetView, PipelineRequest


class EndpointNotServed:
    """Out: a cluster whose provider cannot answer the endpoint called."""

    def exclusion(
        self, candidate: Candidate, request: PipelineRequest, fleet: FleetView
    ) -> str | None:
        if candidate.cluster.provider.serves(request.endpoint.family):
            return None
        return f"does not serve {request.endpoint.path}"
