"""The HTTP APIs the sidecar understands: API families, endpoints and providers.

An *endpoint* is what the application called (for example the OpenAI chat API); a
*provider* is what a cluster's servers speak. A cluster can serve an endpoint only
when its provider speaks that endpoint's family.
"""

from enum import Enum


class ApiFamily(Enum):
    """A family of HTTP APIs with one request and error shape."""

    OPENAI = "openai"
    OLLAMA = "ollama"
    JSON = "json"
    """Any JSON-over-HTTP service (a fraud model, a rule engine): no model field."""


class Endpoint(Enum):
    """An AI endpoint an application may call, with its path and family."""

    OPENAI_CHAT = ("/v1/chat/completions", ApiFamily.OPENAI)
    OPENAI_COMPLETIONS = ("/v1/completions", ApiFamily.OPENAI)
    OPENAI_EMBEDDINGS = ("/v1/embeddings", ApiFamily.OPENAI)
    OLLAMA_CHAT = ("/api/chat", ApiFamily.OLLAMA)
    OLLAMA_GENERATE = ("/api/generate", ApiFamily.OLLAMA)
    OLLAMA_EMBED = ("/api/embed", ApiFamily.OLLAMA)
    JSON_SERVICE = ("", ApiFamily.JSON)
    """A service path the policy binds to a virtual model (the path is the request's)."""

    def __init__(self, path: str, family: ApiFamily) -> None:
        self.path = path
        self.family = family


_ENDPOINT_BY_PATH = {endpoint.path: endpoint for endpoint in Endpoint if endpoint.path}


def endpoint_for_path(path: str) -> Endpoint | None:
    """Return the AI endpoint a request path names, or None for any other path.

    The query string is ignored; matching is exact otherwise, as in Envoy's routes.
    """
    query_start = path.find("?")
    if query_start >= 0:
        path = path[:query_start]
    return _ENDPOINT_BY_PATH.get(path)


class Provider(Enum):
    """The API a cluster's servers speak."""

    OPENAI = "openai"
    OLLAMA = "ollama"
    JSON = "json"

    def serves(self, family: ApiFamily) -> bool:
        """Whether servers of this provider answer requests of ``family``.

        Ollama serves its own API and an OpenAI-compatible one; OpenAI-style servers
        serve only the OpenAI API; JSON services serve only their own requests.
        """
        if self is Provider.JSON or family is ApiFamily.JSON:
            return self is Provider.JSON and family is ApiFamily.JSON
        if self is Provider.OLLAMA:
            return True
        return family is ApiFamily.OPENAI

    @property
    def rewrites_model(self) -> bool:
        """Whether requests to this provider carry a ``model`` the sidecar sets."""
        return self is not Provider.JSON
