"""Answers the sidecar writes itself (cached or degraded), in the shape the client expects.

Given the assistant's text, build what the endpoint returns: an OpenAI chat or text
completion (JSON, or server-sent events when the request streams) or an Ollama chat
or generate answer (JSON, or NDJSON). Also the reverse: the text of an upstream
answer, to keep it for later.
"""

import json
import time
import uuid
from typing import Any

from sidecar.domain.api import Endpoint

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
JSON = "application/json"


def can_synthesize(endpoint: Endpoint) -> bool:
    """Whether an answer made of text fits this endpoint (embeddings and services do not)."""
    return endpoint not in (
        Endpoint.OPENAI_EMBEDDINGS,
        Endpoint.OLLAMA_EMBED,
        Endpoint.JSON_SERVICE,
    )


def synthesize(endpoint: Endpoint, text: str, model: str, stream: bool) -> tuple[bytes, str]:
    """The body and content type of an answer carrying ``text`` as ``model`` wrote it."""
    if endpoint is Endpoint.OPENAI_CHAT:
        return _openai(text, model, stream, chat=True)
    if endpoint is Endpoint.OPENAI_COMPLETIONS:
        return _openai(text, model, stream, chat=False)
    return _ollama(endpoint, text, model, stream)


def answer_text(endpoint: Endpoint, answer: Any) -> str | None:
    """The assistant's text in a (non-streamed) upstream answer, or None."""
    try:
        if endpoint is Endpoint.OPENAI_CHAT:
            text = answer["choices"][0]["message"]["content"]
        elif endpoint is Endpoint.OPENAI_COMPLETIONS:
            text = answer["choices"][0]["text"]
        elif endpoint is Endpoint.OLLAMA_CHAT:
            text = answer["message"]["content"]
        elif endpoint is Endpoint.OLLAMA_GENERATE:
            text = answer["response"]
        else:
            return None
    except (KeyError, IndexError, TypeError):
        return None
    return text if isinstance(text, str) else None


def _openai(text: str, model: str, stream: bool, chat: bool) -> tuple[bytes, str]:
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}
    if not stream:
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        kind = "chat.completion" if chat else "text_completion"
        return _json({**base, "object": kind, "choices": [choice]}), JSON
    delta: dict[str, Any] = {"role": "assistant", "content": text} if chat else {}
    chunk_choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
    if chat:
        chunk_choice["delta"] = delta
    else:
        chunk_choice["text"] = text
    kind = "chat.completion.chunk" if chat else "text_completion"
    chunk = {**base, "object": kind, "choices": [chunk_choice]}
    return b"data: " + _json(chunk) + b"\n\ndata: [DONE]\n\n", SSE


def _ollama(endpoint: Endpoint, text: str, model: str, stream: bool) -> tuple[bytes, str]:
    answer: dict[str, Any] = {
        "model": model,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "done": True,
        "done_reason": "stop",
    }
    if endpoint is Endpoint.OLLAMA_CHAT:
        answer["message"] = {"role": "assistant", "content": text}
    else:
        answer["response"] = text
    if stream:
        return _json(answer) + b"\n", NDJSON
    return _json(answer), JSON


def _json(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
