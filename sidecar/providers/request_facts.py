"""What a request body says about its cost: output tokens asked for, and a fixed answer.

A request whose answer is fixed may be served again from the cost cache.

OpenAI requests cap output with ``max_completion_tokens`` or ``max_tokens``; Ollama
requests with ``options.num_predict``. Embeddings produce no output tokens. A request
that sets no cap is assumed to ask for the policy's ``limits.assumed_max_tokens``.
"""

from typing import Any

from sidecar.domain.api import ApiFamily, Endpoint
from sidecar.providers.body import RequestBody, wants_stream

_EMBEDDINGS = frozenset({Endpoint.OPENAI_EMBEDDINGS, Endpoint.OLLAMA_EMBED})
_OPENAI_CAPS = ("max_completion_tokens", "max_tokens")


def max_output_tokens(endpoint: Endpoint, body: RequestBody, assumed: int) -> int:
    """The output tokens the request may produce: its own cap, else ``assumed``."""
    if endpoint in _EMBEDDINGS:
        return 0
    document = body.document
    if endpoint.family is ApiFamily.OLLAMA:
        options = document.get("options")
        cap = options.get("num_predict") if isinstance(options, dict) else None
        return _positive_int(cap) or assumed
    for name in _OPENAI_CAPS:
        cap = _positive_int(document.get(name))
        if cap:
            return cap
    return assumed


def answer_is_fixed(endpoint: Endpoint, body: RequestBody, deterministic_chat: bool) -> bool:
    """Whether the same request always gets the same answer, so a cached one may serve it.

    Embeddings are; chat and completions are when they ask for temperature 0 and
    ``deterministic_chat`` allows them. Streamed requests and JSON services never are
    (the cache keeps whole answers of model APIs only).
    """
    if endpoint is Endpoint.JSON_SERVICE or wants_stream(body, endpoint):
        return False
    if endpoint in _EMBEDDINGS:
        return True
    return deterministic_chat and _temperature(endpoint, body.document) == 0


def _temperature(endpoint: Endpoint, document: dict[str, Any]) -> float | None:
    if endpoint.family is ApiFamily.OLLAMA:
        options = document.get("options")
        value = options.get("temperature") if isinstance(options, dict) else None
    else:
        value = document.get("temperature")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value
