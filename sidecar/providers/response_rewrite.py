"""Turning an upstream answer into the answer the client's API expects.

When a cluster of another API family served the request (an OpenAI-style cluster
answering Ollama's ``/api/generate``), its answer is translated on the way back: a
whole JSON answer or error at once, a stream of server-sent events chunk by chunk into
Ollama's NDJSON. ``plan_rewrite`` says whether and how; the rewrite holds the state
of a stream between chunks.
"""

from dataclasses import dataclass, field

from sidecar.domain.api import Endpoint, Provider
from sidecar.providers.translate import (
    StreamTranslator,
    needs_translation,
    response_content_type,
    translate_response_body,
)


@dataclass
class ResponseRewrite:
    """How one answer is rewritten: ``buffered`` (whole body) or ``streamed`` (chunks)."""

    endpoint: Endpoint
    status: int
    model: str
    mode: str
    content_type: str
    _stream: StreamTranslator | None = field(default=None, repr=False)

    def whole(self, body: bytes) -> bytes:
        """The client's answer for a whole upstream body."""
        return translate_response_body(self.endpoint, body, self.status, self.model)

    def chunk(self, data: bytes, end_of_stream: bool) -> bytes:
        """The client's bytes for one chunk of an upstream stream."""
        assert self._stream is not None, "chunk() is for streamed rewrites"
        out = self._stream.feed(data)
        if end_of_stream:
            out += self._stream.finish()
        return out


def plan_rewrite(
    endpoint: Endpoint, provider: Provider, status: int, streaming: bool, model: str
) -> ResponseRewrite | None:
    """The rewrite an answer from ``provider`` needs for a client of ``endpoint``, if any.

    Errors (status 400 and up) are always rewritten whole; a successful answer to a
    streaming request is rewritten as a stream.
    """
    if not needs_translation(endpoint, provider):
        return None
    if streaming and status < 400:
        translator = StreamTranslator(endpoint, model)
        content_type = response_content_type(endpoint, True)
        return ResponseRewrite(endpoint, status, model, "streamed", content_type, translator)
    content_type = response_content_type(endpoint, False)
    return ResponseRewrite(endpoint, status, model, "buffered", content_type)
