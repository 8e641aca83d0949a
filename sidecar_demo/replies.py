"""Reply bodies of the fake OpenAI and Ollama APIs: pure functions from a request to a reply.

Replies are deterministic: the text is `"[<server name>] "` followed by an excerpt of the last
user message (or prompt), and the `model` field always names the server's own model.
Token counts are estimated as one token per four characters, rounded up.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sidecar_demo.specs import ModelServerSpec

CHARS_PER_TOKEN = 4
EXCERPT_CHARS = 200
EMBEDDING_DIMENSIONS = 8
SSE_CONTENT_TYPE = "text/event-stream"
NDJSON_CONTENT_TYPE = "application/x-ndjson"
JSON_CONTENT_TYPE = "application/json"

FinishReason = Literal["stop", "length"]


class BadRequestError(ValueError):
    """The request is not one the API accepts (answered with HTTP 400)."""


@dataclass(frozen=True)
class Reply:
    """An encoded reply: one body, or the chunks of a stream."""

    content_type: str
    chunks: tuple[bytes, ...]
    streamed: bool

    @classmethod
    def json(cls, body: Mapping[str, Any]) -> Reply:
        return cls(JSON_CONTENT_TYPE, (_encode(body),), streamed=False)

    @classmethod
    def sse(cls, events: Iterable[Mapping[str, Any]]) -> Reply:
        """Server-sent events, one `data:` line per event, ended by `data: [DONE]`."""
        chunks = [b"data: " + _encode(event) + b"\n\n" for event in events]
        return cls(SSE_CONTENT_TYPE, (*chunks, b"data: [DONE]\n\n"), streamed=True)

    @classmethod
    def ndjson(cls, lines: Iterable[Mapping[str, Any]]) -> Reply:
        chunks = tuple(_encode(line) + b"\n" for line in lines)
        return cls(NDJSON_CONTENT_TYPE, chunks, streamed=True)


ReplyBuilder = Callable[[ModelServerSpec, object], Reply]


def _encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# --- Error bodies -------------------------------------------------------------------------


def openai_error(message: str, status: int) -> dict[str, Any]:
    """Return an error body in the OpenAI shape."""
    error_type = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": error_type, "param": None, "code": None}}


def ollama_error(message: str, status: int) -> dict[str, Any]:
    """Return an error body in the Ollama shape (which does not carry the status)."""
    del status
    return {"error": message}


# --- The reply text and its token counts ----------------------------------------------------


def estimate_tokens(text: str) -> int:
    """Estimate the tokens of `text`: one per four characters, rounded up (0 for "")."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Completion:
    """The reply text of one request, with its token counts."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def complete(
    server_name: str, prompt: str, *, prompt_tokens: int, max_tokens: int | None
) -> Completion:
    """Return the deterministic reply to `prompt`, cut to `max_tokens` if given."""
    excerpt = " ".join(prompt.split())[:EXCERPT_CHARS]
    text = f"[{server_name}] {excerpt}".rstrip()
    finish_reason: FinishReason = "stop"
    if max_tokens is not None and estimate_tokens(text) > max_tokens:
        text = text[: max_tokens * CHARS_PER_TOKEN]
        finish_reason = "length"
    return Completion(text, finish_reason, prompt_tokens, estimate_tokens(text))


def split_into_pieces(text: str) -> list[str]:
    """Split `text` into the pieces a stream sends: words with their trailing spaces."""
    return re.findall(r"\S+\s*", text)


def embed_text(text: str) -> list[float]:
    """Return a deterministic unit vector of `EMBEDDING_DIMENSIONS` floats for `text`."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [
        int.from_bytes(digest[2 * i : 2 * i + 2], "big") / 32767.5 - 1.0
        for i in range(EMBEDDING_DIMENSIONS)
    ]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return [round(value / norm, 6) for value in raw]


# --- Reading request fields -----------------------------------------------------------------


def _as_object(payload: object) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise BadRequestError("the request body must be a JSON object")
    return payload


def _required_str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"'{key}' is required and must be a non-empty string")
    return value


def _optional_bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequestError(f"'{key}' must be a boolean")
    return value


def _optional_positive_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequestError(f"'{key}' must be a positive integer")
    return value


def _string_list(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    raise BadRequestError(f"'{key}' must be a string or a non-empty list of strings")


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise BadRequestError("'stream_options' must be an object")
    return _optional_bool(options, "include_usage", False)


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("'messages' is required and must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequestError("each message must be an object with a string 'role'")
    return messages


def _message_text(message: Mapping[str, Any]) -> str:
    """Return the text of a message: a string, or the text of its content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        return " ".join(text for text in texts if isinstance(text, str))
    return ""


def _chat_completion(spec: ModelServerSpec, body: Mapping[str, Any]) -> Completion:
    messages = _messages(body)
    user_messages = [message for message in messages if message["role"] == "user"]
    prompt = _message_text((user_messages or messages)[-1])
    prompt_tokens = sum(estimate_tokens(_message_text(message)) for message in messages)
    max_tokens = _optional_positive_int(body, "max_tokens")
    return complete(spec.name, prompt, prompt_tokens=prompt_tokens, max_tokens=max_tokens)


def _prompt_completion(spec: ModelServerSpec, prompt: str, max_tokens: int | None) -> Completion:
    prompt_tokens = estimate_tokens(prompt)
    return complete(spec.name, prompt, prompt_tokens=prompt_tokens, max_tokens=max_tokens)


# --- OpenAI API -----------------------------------------------------------------------------


def openai_chat(spec: ModelServerSpec, payload: object) -> Reply:
    """`POST /v1/chat/completions`: a chat.completion, or its chunks as server-sent events."""
    body = _as_object(payload)
    _required_str(body, "model")
    completion = _chat_completion(spec, body)
    if _optional_bool(body, "stream", False):
        envelope = _openai_envelope(spec, "chatcmpl", "chat.completion.chunk")
        events = _chat_stream(envelope, completion)
        return Reply.sse(_with_usage(events, envelope, completion, _include_usage(body)))
    message = {"role": "assistant", "content": completion.text}
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": completion.finish_reason,
    }
    envelope = _openai_envelope(spec, "chatcmpl", "chat.completion")
    return Reply.json({**envelope, "choices": [choice], "usage": _openai_usage(completion)})


def openai_completion(spec: ModelServerSpec, payload: object) -> Reply:
    """`POST /v1/completions` (legacy): a text_completion, or its chunks as server-sent events.

    A list of prompts is answered as one prompt, joined by newlines.
    """
    body = _as_object(payload)
    _required_str(body, "model")
    prompt = "\n".join(_string_list(body, "prompt"))
    completion = _prompt_completion(spec, prompt, _optional_positive_int(body, "max_tokens"))
    envelope = _openai_envelope(spec, "cmpl", "text_completion")
    if _optional_bool(body, "stream", False):
        events = _text_stream(envelope, completion)
        return Reply.sse(_with_usage(events, envelope, completion, _include_usage(body)))
    choice = _text_choice(completion.text, completion.finish_reason)
    return Reply.json({**envelope, "choices": [choice], "usage": _openai_usage(completion)})


def openai_embeddings(spec: ModelServerSpec, payload: object) -> Reply:
    """`POST /v1/embeddings`: one deterministic vector per input string."""
    body = _as_object(payload)
    _required_str(body, "model")
    inputs = _string_list(body, "input")
    data = [
        {"object": "embedding", "index": index, "embedding": embed_text(text)}
        for index, text in enumerate(inputs)
    ]
    tokens = sum(estimate_tokens(text) for text in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return Reply.json({"object": "list", "data": data, "model": spec.model, "usage": usage})


def _openai_envelope(spec: ModelServerSpec, id_prefix: str, object_name: str) -> dict[str, Any]:
    return {
        "id": f"{id_prefix}-{uuid.uuid4().hex[:24]}",
        "object": object_name,
        "created": int(time.time()),
        "model": spec.model,
    }


def _openai_usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.total_tokens,
    }


def _chat_stream(envelope: Mapping[str, Any], completion: Completion) -> list[dict[str, Any]]:
    deltas: list[dict[str, str]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": piece} for piece in split_into_pieces(completion.text)]
    events = [_chat_chunk(envelope, delta, None) for delta in deltas]
    events.append(_chat_chunk(envelope, {}, completion.finish_reason))
    return events


def _chat_chunk(
    envelope: Mapping[str, Any], delta: Mapping[str, str], finish_reason: FinishReason | None
) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {**envelope, "choices": [choice]}


def _text_stream(envelope: Mapping[str, Any], completion: Completion) -> list[dict[str, Any]]:
    pieces = split_into_pieces(completion.text)
    events = [{**envelope, "choices": [_text_choice(piece, None)]} for piece in pieces]
    events.append({**envelope, "choices": [_text_choice("", completion.finish_reason)]})
    return events


def _text_choice(text: str, finish_reason: FinishReason | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}


def _with_usage(
    events: Sequence[Mapping[str, Any]],
    envelope: Mapping[str, Any],
    completion: Completion,
    include_usage: bool,
) -> list[dict[str, Any]]:
    """Add OpenAI's stream usage: `usage: null` on every chunk, then a chunk with only usage."""
    if not include_usage:
        return [dict(event) for event in events]
    usage_chunk = {**envelope, "choices": [], "usage": _openai_usage(completion)}
    return [*({**event, "usage": None} for event in events), usage_chunk]


# --- Ollama API -----------------------------------------------------------------------------

_LOAD_DURATION_NS = 1_000_000
_PROMPT_EVAL_NS_PER_TOKEN = 100_000
_EVAL_NS_PER_TOKEN = 10_000_000


def ollama_chat(spec: ModelServerSpec, payload: object) -> Reply:
    """`POST /api/chat`: a chat reply, streamed as NDJSON unless `"stream": false`."""
    body = _as_object(payload)
    _required_str(body, "model")
    completion = _chat_completion(spec, body)
    stream = _optional_bool(body, "stream", True)
    return _ollama_reply(spec, completion, stream, "message", _assistant_message)


def ollama_generate(spec: ModelServerSpec, payload: object) -> Reply:
    """`POST /api/generate`: a completion, streamed as NDJSON unless `"stream": false`."""
    body = _as_object(payload)
    _required_str(body, "model")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequestError("'prompt' is required and must be a string")
    completion = _prompt_completion(spec, prompt, max_tokens=None)
    stream = _optional_bool(body, "stream", True)
    return _ollama_reply(spec, completion, stream, "response", str)


def _assistant_message(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _ollama_reply(
    spec: ModelServerSpec,
    completion: Completion,
    stream: bool,
    content_key: str,
    wrap: Callable[[str], object],
) -> Reply:
    head = {"model": spec.model, "created_at": _ollama_timestamp()}
    final = {
        **head,
        content_key: wrap(""),
        "done": True,
        "done_reason": completion.finish_reason,
        **_ollama_stats(completion),
    }
    if not stream:
        return Reply.json({**final, content_key: wrap(completion.text)})
    pieces = split_into_pieces(completion.text)
    partials = [{**head, content_key: wrap(piece), "done": False} for piece in pieces]
    return Reply.ndjson([*partials, final])


def _ollama_stats(completion: Completion) -> dict[str, int]:
    """Ollama's counts, with durations (ns) derived from the token counts."""
    prompt_eval_duration = completion.prompt_tokens * _PROMPT_EVAL_NS_PER_TOKEN
    eval_duration = completion.completion_tokens * _EVAL_NS_PER_TOKEN
    return {
        "total_duration": _LOAD_DURATION_NS + prompt_eval_duration + eval_duration,
        "load_duration": _LOAD_DURATION_NS,
        "prompt_eval_count": completion.prompt_tokens,
        "prompt_eval_duration": prompt_eval_duration,
        "eval_count": completion.completion_tokens,
        "eval_duration": eval_duration,
    }


def _ollama_timestamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
