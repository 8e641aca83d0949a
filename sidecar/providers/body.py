"""Reading and rewriting AI request bodies (OpenAI and Ollama JSON).

Both families put the model name in a top-level ``model`` string; the sidecar reads
it to route, and replaces it with the name the chosen cluster expects.
"""

import json
from dataclasses import dataclass
from typing import Any

from sidecar.domain.api import ApiFamily, Endpoint
from sidecar.domain.outcome import Rejection, malformed_body


@dataclass(frozen=True, slots=True)
class RequestBody:
    """A parsed AI request body: the JSON object and the model it asks for."""

    document: dict[str, Any]
    model: str


def parse_request_body(raw: bytes) -> RequestBody | Rejection:
    """Parse ``raw`` as a JSON object with a non-empty string ``model``."""
    if not raw:
        return malformed_body("The request body is empty; send a JSON object.")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as error:
        return malformed_body(f"The request body is not valid JSON: {_json_reason(error)}.")
    if not isinstance(document, dict):
        return malformed_body("The request body must be a JSON object.")
    model = document.get("model")
    if not isinstance(model, str) or not model:
        return malformed_body("The request body must name a model in the 'model' field.")
    return RequestBody(document, model)


def wants_stream(body: RequestBody, endpoint: Endpoint) -> bool:
    """Whether the client asked for a streamed answer (Ollama streams unless told not to)."""
    default = endpoint.family is ApiFamily.OLLAMA and endpoint is not Endpoint.OLLAMA_EMBED
    stream = body.document.get("stream", default)
    return stream is True


def rewrite_model(body: RequestBody, upstream_model: str) -> bytes:
    """Serialize ``body`` with its ``model`` replaced by ``upstream_model``."""
    document = dict(body.document)
    document["model"] = upstream_model
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json_reason(error: ValueError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    return "it is not UTF-8 text"
