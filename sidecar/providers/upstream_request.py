"""What to send a cluster for a request: the body (and path) in the cluster's own API.

Most AI requests keep their endpoint and only get the cluster's model name. A request
to Ollama's native API (``/api/chat``, ``/api/generate``) served by an OpenAI-style
cluster is translated to the OpenAI chat API (``sidecar.providers.translate``). A
streamed OpenAI request asks for the final usage chunk, so tokens can be counted. JSON
service requests go as the client sent them.
"""

import json

from sidecar.domain.api import Endpoint
from sidecar.domain.outcome import Rejection
from sidecar.domain.policy import ClusterSpec
from sidecar.providers.body import RequestBody, rewrite_model
from sidecar.providers.translate import needs_translation, translate_request_body, upstream_path
from sidecar.providers.usage import ensure_stream_usage


def upstream_request(
    endpoint: Endpoint, path: str, cluster: ClusterSpec, body: RequestBody
) -> tuple[bytes, str] | Rejection:
    """The body and path for ``cluster``, or why the request cannot be expressed there.

    ``path`` is the path the client called (the endpoint's, or a service path).
    """
    if not cluster.provider.rewrites_model:
        return json.dumps(body.document, separators=(",", ":")).encode("utf-8"), path
    if not needs_translation(endpoint, cluster.provider):
        with_usage = RequestBody(ensure_stream_usage(endpoint, body.document), body.model)
        return rewrite_model(with_usage, cluster.upstream_model), path
    translated = translate_request_body(
        endpoint, cluster.provider, body.document, cluster.upstream_model
    )
    if isinstance(translated, Rejection):
        return translated
    return translated, upstream_path(endpoint, cluster.provider)
