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


SERVICES_PREFIX = "/services/"


def classify_path(path: str, policy: Policy) -> RoutedPath | None:
    """The endpoint of ``path`` (query string ignored), or None when it is not the sidecar's."""
    bare = path.partition("?")[0]
    endpoint = endpoint_for_path(bare)
    if endpoint is not None:
        return RoutedPath(endpoint, bare)
    if bare.startswith(SERVICES_PREFIX):
        # Unknown service paths are the sidecar's too: it answers 404 for them.
        return RoutedPath(Endpoint.JSON_SERVICE, bare, policy.service_paths.get(bare))
    return None
