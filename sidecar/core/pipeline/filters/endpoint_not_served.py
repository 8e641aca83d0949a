"""Excludes clusters whose servers cannot answer the API the client called.

A cluster serves an endpoint when it speaks its API, or when the sidecar translates
between the two (Ollama's chat and generate APIs to an OpenAI-style cluster).
"""

from sidecar.core.pipeline import Candidate, FleetView, PipelineRequest
from sidecar.providers.translate import can_serve


class EndpointNotServed:
    """Out: a cluster whose provider cannot answer the endpoint called."""

    def exclusion(
        self, candidate: Candidate, request: PipelineRequest, fleet: FleetView
    ) -> str | None:
        if can_serve(request.endpoint, candidate.cluster.provider):
            return None
        return f"does not serve {request.endpoint.path}"
