"""Which kind of request a path is: an AI endpoint, a policy's JSON service, or neither."""

from dataclasses import dataclass

from sidecar.domain.api import Endpoint, endpoint_for_path
from sidecar.domain.ids import ModelName
from sidecar.domain.policy import Policy


@dataclass(frozen=True, slots=True)
class RoutedPath:
    """A path the sidecar routes: its endpoint, and the model a service path is bound to."""

    endpoint: Endpoint
    path: str
    service_model: ModelName | None = None


def classify_path(path: str, policy: Policy) -> RoutedPath | None:
    """The endpoint of ``path`` (query string ignored), or None when it is not the sidecar's."""
    bare = path.partition("?")[0]
    endpoint = endpoint_for_path(bare)
    if endpoint is not None:
        return RoutedPath(endpoint, bare)
    model = policy.service_paths.get(bare)
    if model is not None:
        return RoutedPath(Endpoint.JSON_SERVICE, bare, model)
    return None
