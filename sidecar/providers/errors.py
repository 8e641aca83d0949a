"""Error bodies in the shape each API family's clients expect.

OpenAI clients read ``{"error": {"message", "type", "param", "code"}}``; Ollama
clients read ``{"error": "<message>"}``.
"""

import json

from sidecar.domain.api import ApiFamily
from sidecar.domain.outcome import Rejection


def render_error(rejection: Rejection, family: ApiFamily) -> bytes:
    """The JSON error body for ``rejection`` in ``family``'s shape."""
    if family is ApiFamily.OLLAMA:
        document: dict[str, object] = {"error": rejection.message}
    else:
        document = {
            "error": {
                "message": rejection.message,
                "type": rejection.error_type,
                "param": None,
                "code": rejection.code,
            }
        }
    return json.dumps(document, ensure_ascii=False).encode("utf-8")
