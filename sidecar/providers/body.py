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


def parse_body_for(
    endpoint: Endpoint, raw: bytes, service_model: str | None
) -> RequestBody | Rejection:
    """Parse a request to ``endpoint``: AI bodies name their model; service bodies do not.

    A JSON service request (``service_model`` set) is any JSON object; its model is
    the one the policy binds to its path.
    """
    if endpoint is not Endpoint.JSON_SERVICE or service_model is None:
        return parse_request_body(raw)
    document = _parse_object(raw)
    if isinstance(document, Rejection):
        return document
    return RequestBody(document, service_model)


def parse_request_body(raw: bytes) -> RequestBody | Rejection:
    """Parse ``raw`` as a UTF-8 JSON object with a non-empty string ``model``.

    Anything a strict JSON reader would refuse is refused here too, so it never reaches
    an upstream: invalid UTF-8, ``NaN`` and ``Infinity``, numbers too long to read, and
    nesting too deep to follow.
    """
    document = _parse_object(raw)
    if isinstance(document, Rejection):
        return document
    model = document.get("model")
    if not isinstance(model, str) or not model:
        return malformed_body("The request body must name a model in the 'model' field.")
    return RequestBody(document, model)


def _parse_object(raw: bytes) -> dict[str, Any] | Rejection:
    if not raw:
        return malformed_body("The request body is empty; send a JSON object.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return malformed_body("The request body is not UTF-8 text.")
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        return malformed_body(f"The request body is not valid JSON: {error.msg} at {where}.")
    except _NotJsonError as error:
        return malformed_body(f"The request body is not valid JSON: {error}.")
    except ValueError:
        return malformed_body("The request body has a number too long to read.")
    except RecursionError:
        return malformed_body("The request body is nested too deeply.")
    if not isinstance(document, dict):
        return malformed_body("The request body must be a JSON object.")
    return document


class _NotJsonError(ValueError):
    """A token Python's reader accepts but JSON does not."""


def _refuse_constant(name: str) -> Any:
    raise _NotJsonError(f"{name} is not a JSON value")


def wants_stream(body: RequestBody, endpoint: Endpoint) -> bool:
    """Whether the client asked for a streamed answer (Ollama streams unless told not to)."""
    if endpoint is Endpoint.JSON_SERVICE:
        return False
    default = endpoint.family is ApiFamily.OLLAMA and endpoint is not Endpoint.OLLAMA_EMBED
    stream = body.document.get("stream", default)
    return stream is True


def rewrite_model(body: RequestBody, upstream_model: str) -> bytes:
    """Serialize ``body`` with its ``model`` replaced by ``upstream_model``.

    Text is kept as UTF-8; a body holding lone surrogates (valid as JSON escapes,
    not as UTF-8) is written with ASCII escapes instead, which says the same.
    """
    document = dict(body.document)
    document["model"] = upstream_model
    try:
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(document, separators=(",", ":")).encode("ascii")
