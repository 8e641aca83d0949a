"""Translation between the Ollama API an application calls and the OpenAI API a cluster speaks.

A fallback chain may cross API families: an application calls Ollama's ``/api/generate``
or ``/api/chat`` while the cluster serving it speaks only the OpenAI API. Ollama servers
speak both families, so that is the one direction needing translation here. This
module holds the pure functions (no I/O, no clocks except an injectable one) for each
ext_proc phase:

- request body, once: :func:`needs_translation`, :func:`upstream_path` (the ``:path``
  to send) and :func:`translate_request` / :func:`translate_request_body` (the body);
- response headers, once: :func:`response_content_type` (the new ``content-type``; the
  body's length changes, so ``content-length`` must go);
- a buffered response body: :func:`translate_response_body` (an answer or an error),
  built on :func:`translate_response` and :func:`translate_error`;
- a streamed response body, chunk by chunk: :class:`StreamTranslator` turns OpenAI
  server-sent events into Ollama NDJSON lines.

Fields with no counterpart are dropped (``keep_alive``, ``template``, ``raw``,
``context``, ``think``, options such as ``top_k`` or ``num_ctx``); fields that would
change the answer if dropped (``suffix``) are refused. Ollama's base64 ``images``
become OpenAI image parts with a ``data:`` URL. Answers name the ``model`` the caller
passes (the upstream model that served them).
"""

import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard

from sidecar.domain.api import ApiFamily, Endpoint, Provider
from sidecar.domain.outcome import Rejection, malformed_body
from sidecar.providers.synthetic import JSON, NDJSON, SSE

Clock = Callable[[], float]
"""Seconds since the epoch; used only when an upstream answer carries no ``created``."""

_OPENAI_CHAT_PATH = Endpoint.OPENAI_CHAT.path
_OLLAMA_TEXT_ENDPOINTS = (Endpoint.OLLAMA_CHAT, Endpoint.OLLAMA_GENERATE)
_UNREADABLE_ANSWER = "The upstream answer could not be read."
_CUT_SHORT = "The upstream stream ended before the answer was complete."


# --- Which requests need translation --------------------------------------------------------


def needs_translation(app_endpoint: Endpoint, provider: Provider) -> bool:
    """Whether a request to ``app_endpoint`` must be translated for ``provider``'s servers."""
    return provider is Provider.OPENAI and app_endpoint in _OLLAMA_TEXT_ENDPOINTS


def can_serve(app_endpoint: Endpoint, provider: Provider) -> bool:
    """Whether ``provider``'s servers can answer ``app_endpoint``, natively or translated."""
    return provider.serves(app_endpoint.family) or needs_translation(app_endpoint, provider)


def upstream_path(app_endpoint: Endpoint, provider: Provider) -> str:
    """The path to request upstream: the OpenAI chat API when translating, else unchanged."""
    if needs_translation(app_endpoint, provider):
        return _OPENAI_CHAT_PATH
    return app_endpoint.path


def response_content_type(app_endpoint: Endpoint, stream: bool) -> str:
    """The content type of the answer the application receives from ``app_endpoint``."""
    if not stream:
        return JSON
    return SSE if app_endpoint.family is ApiFamily.OPENAI else NDJSON


# --- Request bodies -------------------------------------------------------------------------


class _UntranslatableError(ValueError):
    """The request cannot be expressed for the upstream; the message says why."""


def translate_request(
    app_endpoint: Endpoint, provider: Provider, document: dict[str, Any], upstream_model: str
) -> dict[str, Any] | Rejection:
    """The request body to send upstream, asking for ``upstream_model``.

    Without translation this is ``document`` with its model replaced. An Ollama chat
    or generate request for an OpenAI-style provider becomes an OpenAI chat request;
    one that cannot be expressed there is refused with a 400 :class:`Rejection`.
    ``document`` is not modified.
    """
    if not needs_translation(app_endpoint, provider):
        return {**document, "model": upstream_model}
    try:
        return _ollama_to_openai_chat(app_endpoint, document, upstream_model)
    except _UntranslatableError as error:
        return malformed_body(str(error))


def translate_request_body(
    app_endpoint: Endpoint, provider: Provider, document: dict[str, Any], upstream_model: str
) -> bytes | Rejection:
    """:func:`translate_request`, serialized as the UTF-8 JSON body to send."""
    translated = translate_request(app_endpoint, provider, document, upstream_model)
    if isinstance(translated, Rejection):
        return translated
    return _encode(translated)


def _ollama_to_openai_chat(
    app_endpoint: Endpoint, document: dict[str, Any], upstream_model: str
) -> dict[str, Any]:
    if app_endpoint is Endpoint.OLLAMA_GENERATE:
        messages = _generate_messages(document)
    else:
        messages = _chat_messages(document.get("messages"))
    stream = _stream_flag(document)
    request: dict[str, Any] = {"model": upstream_model, "messages": messages, "stream": stream}
    if stream:
        request["stream_options"] = {"include_usage": True}
    request.update(_sampling_options(document.get("options")))
    response_format = _response_format(document.get("format"))
    if response_format is not None:
        request["response_format"] = response_format
    tools = document.get("tools")
    if app_endpoint is Endpoint.OLLAMA_CHAT and isinstance(tools, list) and tools:
        request["tools"] = tools
    return request


def _stream_flag(document: dict[str, Any]) -> bool:
    """Ollama streams unless told ``"stream": false``."""
    stream = document.get("stream")
    if stream is None:
        return True
    if not isinstance(stream, bool):
        raise _UntranslatableError("'stream' must be true or false.")
    return stream


def _generate_messages(document: dict[str, Any]) -> list[dict[str, Any]]:
    prompt = document.get("prompt")
    if not isinstance(prompt, str):
        raise _UntranslatableError("'prompt' is required and must be a string.")
    if document.get("suffix"):
        raise _UntranslatableError(
            "'suffix' (fill-in-the-middle) is not supported by the upstream serving this model."
        )
    messages: list[dict[str, Any]] = []
    system = _optional_string(document, "system")
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _content(prompt, document.get("images"))})
    return messages


def _optional_string(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _UntranslatableError(f"'{key}' must be a string.")
    return value


# --- Chat messages and tool calls -----------------------------------------------------------


@dataclass
class _ToolCallLedger:
    """Tool calls awaiting their result, so each ``tool`` message can name its call's id."""

    pending: list[tuple[str, str]] = field(default_factory=list)  # (id, function name)
    issued: int = 0

    def record(self, call_id: str | None, name: str) -> str:
        if call_id is None:
            call_id = f"call_{self.issued}"
        self.issued += 1
        self.pending.append((call_id, name))
        return call_id

    def answer(self, message: dict[str, Any]) -> str:
        explicit = message.get("tool_call_id")
        if isinstance(explicit, str) and explicit:
            self.pending = [entry for entry in self.pending if entry[0] != explicit]
            return explicit
        if not self.pending:
            raise _UntranslatableError(
                "A 'tool' message must answer a tool call made by an earlier assistant message."
            )
        names = [call_name for _, call_name in self.pending]
        name = message.get("tool_name")
        position = names.index(name) if name in names else 0
        return self.pending.pop(position)[0]


def _chat_messages(messages: object) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise _UntranslatableError("'messages' is required and must be a list.")
    ledger = _ToolCallLedger()
    return [_chat_message(message, ledger) for message in messages]


def _chat_message(message: object, ledger: _ToolCallLedger) -> dict[str, Any]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise _UntranslatableError("Each message must be an object with a string 'role'.")
    role: str = message["role"]
    text = _optional_string(message, "content")
    translated: dict[str, Any] = {"role": role, "content": _content(text, message.get("images"))}
    if role == "tool":
        translated["tool_call_id"] = ledger.answer(message)
    calls = message.get("tool_calls")
    if role == "assistant" and isinstance(calls, list) and calls:
        translated["tool_calls"] = [_openai_tool_call(call, ledger) for call in calls]
    return translated


def _openai_tool_call(call: object, ledger: _ToolCallLedger) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise _UntranslatableError("Each tool call must have a 'function' with a string 'name'.")
    name: str = function["name"]
    arguments = function.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    given_id = call.get("id") if isinstance(call, dict) else None
    call_id = ledger.record(given_id if isinstance(given_id, str) and given_id else None, name)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- Images ---------------------------------------------------------------------------------

_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def _content(text: str, images: object) -> str | list[dict[str, Any]]:
    """A message's OpenAI content: the text, or text and image parts when there are images."""
    if images is None or images == []:
        return text
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        raise _UntranslatableError("'images' must be a list of base64 strings.")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for image in images:
        url = f"data:{_image_type(image)};base64,{image}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def _image_type(image: str) -> str:
    try:
        head = base64.b64decode(image[:16], validate=True)
    except (binascii.Error, ValueError):
        head = b""
    for signature, media_type in _IMAGE_SIGNATURES:
        if head.startswith(signature):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    raise _UntranslatableError("Each image must be a base64 PNG, JPEG, GIF or WebP image.")


# --- Options and format ---------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_stop(value: object) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


_OPTIONS: dict[str, tuple[str, Callable[[object], bool], str]] = {
    # Ollama option: (OpenAI field, type check, what the type should be)
    "temperature": ("temperature", _is_number, "a number"),
    "top_p": ("top_p", _is_number, "a number"),
    "presence_penalty": ("presence_penalty", _is_number, "a number"),
    "frequency_penalty": ("frequency_penalty", _is_number, "a number"),
    "seed": ("seed", _is_integer, "an integer"),
    "stop": ("stop", _is_stop, "a list of strings"),
    "num_predict": ("max_tokens", _is_integer, "an integer"),
}


def _sampling_options(options: object) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise _UntranslatableError("'options' must be an object.")
    translated: dict[str, Any] = {}
    for name, (openai_name, is_valid, expected) in _OPTIONS.items():
        value = options.get(name)
        if value is None:
            continue
        if not is_valid(value):
            raise _UntranslatableError(f"'options.{name}' must be {expected}.")
        translated[openai_name] = value
    if translated.get("max_tokens", 1) <= 0:
        del translated["max_tokens"]  # Ollama: -1 no limit, -2 fill the context
    return translated


def _response_format(requested: object) -> dict[str, Any] | None:
    if requested is None or requested == "":
        return None
    if requested == "json":
        return {"type": "json_object"}
    if isinstance(requested, dict):
        schema = {"name": "response", "schema": requested}
        return {"type": "json_schema", "json_schema": schema}
    raise _UntranslatableError("'format' must be \"json\" or a JSON schema object.")


# --- Buffered answers and errors ------------------------------------------------------------


def translate_response(
    app_endpoint: Endpoint, openai_answer: object, model: str, *, clock: Clock = time.time
) -> dict[str, Any]:
    """The Ollama answer for a (non-streamed) OpenAI ``chat.completion``.

    An OpenAI error body becomes an Ollama error, as does an answer with no choice
    to read.
    """
    if not isinstance(openai_answer, dict):
        return {"error": _UNREADABLE_ANSWER}
    if "error" in openai_answer:
        return translate_error(openai_answer)
    choice = _first_choice(openai_answer) or {}
    message = choice.get("message")
    if not isinstance(message, dict):
        return {"error": _UNREADABLE_ANSWER}
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    answer = _ollama_line(app_endpoint, model, _timestamp(openai_answer, clock), text)
    calls = _ollama_tool_calls(message.get("tool_calls"))
    if calls and app_endpoint is Endpoint.OLLAMA_CHAT:
        answer["message"]["tool_calls"] = calls
    answer["done"] = True
    answer["done_reason"] = _done_reason(choice.get("finish_reason"))
    answer.update(_usage_counts(openai_answer.get("usage")))
    return answer


def translate_error(openai_error: object) -> dict[str, str]:
    """The Ollama error body (``{"error": "<message>"}``) for an upstream error body."""
    if isinstance(openai_error, dict):
        error = openai_error.get("error")
        for candidate in (
            error.get("message") if isinstance(error, dict) else error,
            openai_error.get("message"),
            openai_error.get("detail"),
        ):
            if isinstance(candidate, str) and candidate:
                return {"error": candidate}
    return {"error": "The upstream server reported an error."}


def translate_response_body(
    app_endpoint: Endpoint, raw: bytes, status: int, model: str, *, clock: Clock = time.time
) -> bytes:
    """The Ollama body for a buffered upstream body answered with HTTP ``status``.

    A success is translated as an answer, anything else as an error. An error body
    that is not JSON (a proxy's plain-text page) lends its first line to the message.
    """
    try:
        document: object = json.loads(raw)
    except (ValueError, RecursionError):
        document = None
    if 200 <= status < 300:
        return _encode(translate_response(app_endpoint, document, model, clock=clock))
    if document is None:
        return _encode({"error": _plain_error(raw, status)})
    return _encode(translate_error(document))


def _plain_error(raw: bytes, status: int) -> str:
    lines = raw.decode("utf-8", "replace").strip().splitlines()
    first = lines[0].strip() if lines else ""
    if first and not first.startswith("<") and len(first) <= 300:
        return first
    return f"The upstream server answered with HTTP status {status}."


def _first_choice(answer: object) -> dict[str, Any] | None:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


def _ollama_tool_calls(calls: object) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        return []
    translated = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            continue
        entry: dict[str, Any] = {}
        if isinstance(call, dict) and isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        arguments = _arguments_object(function.get("arguments"))
        entry["function"] = {"name": function["name"], "arguments": arguments}
        translated.append(entry)
    return translated


def _arguments_object(arguments: object) -> dict[str, Any]:
    """Ollama's tool-call arguments are an object; OpenAI's are its JSON text."""
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except (ValueError, RecursionError):
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


# --- Pieces of Ollama answers ---------------------------------------------------------------


def _ollama_line(app_endpoint: Endpoint, model: str, created_at: str, text: str) -> dict[str, Any]:
    """An Ollama answer line carrying ``text``, without its ``done`` fields yet."""
    line: dict[str, Any] = {"model": model, "created_at": created_at}
    if app_endpoint is Endpoint.OLLAMA_CHAT:
        line["message"] = {"role": "assistant", "content": text}
    else:
        line["response"] = text
    return line


def _done_reason(finish_reason: object) -> str:
    """Ollama's ``done_reason``: a tool call ends an Ollama answer with ``stop`` too."""
    if not isinstance(finish_reason, str) or finish_reason in ("tool_calls", "function_call"):
        return "stop"
    return finish_reason


def _usage_counts(usage: object) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    counts = {}
    for openai_name, ollama_name in (
        ("prompt_tokens", "prompt_eval_count"),
        ("completion_tokens", "eval_count"),
    ):
        value = usage.get(openai_name)
        if _is_integer(value) and value >= 0:
            counts[ollama_name] = value
    return counts


def _timestamp(answer: dict[str, Any], clock: Clock) -> str:
    """Ollama's ``created_at`` (ISO 8601, UTC) from OpenAI's ``created`` or the clock."""
    created = answer.get("created")
    if _is_integer(created):
        formatted = _format_time(created)
        if formatted is not None:
            return formatted
    return _format_time(clock()) or "1970-01-01T00:00:00Z"


def _format_time(seconds: float) -> str | None:
    try:
        moment = datetime.fromtimestamp(int(seconds), UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _encode(document: object) -> bytes:
    """Compact UTF-8 JSON; ASCII escapes when the text holds lone surrogates."""
    try:
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(document, separators=(",", ":")).encode("ascii")


# --- Streams --------------------------------------------------------------------------------

_LINE_END = re.compile(rb"\r\n|\r|\n")


class _SseLines:
    """Splits a byte stream into server-sent-event lines, whatever the chunk boundaries.

    Lines end with CRLF, LF or CR; a CR at the end of a chunk is held back until the
    next byte shows whether an LF follows.
    """

    def __init__(self) -> None:
        self._pending = b""

    def push(self, chunk: bytes) -> Iterator[str]:
        data = self._pending + chunk
        start = 0
        for end in _LINE_END.finditer(data):
            if end.group() == b"\r" and end.end() == len(data):
                break
            yield data[start : end.start()].decode("utf-8", "replace")
            start = end.end()
        self._pending = data[start:]

    def flush(self) -> Iterator[str]:
        rest, self._pending = self._pending, b""
        for line in _LINE_END.split(rest):
            if line:
                yield line.decode("utf-8", "replace")


@dataclass
class _ToolCallParts:
    """A streamed tool call, assembled from its fragments."""

    call_id: str | None = None
    name: str = ""
    arguments: str = ""


class StreamTranslator:
    """Turns an OpenAI chat stream (server-sent events) into Ollama NDJSON, chunk by chunk.

    Call :meth:`feed` with each body chunk as it arrives and :meth:`finish` at the end
    of the stream; send what they return (possibly nothing) to the application. The
    output holds only whole lines: one per content delta, a tool-call line when the
    upstream calls tools (chat), and exactly one last line, ``done: true`` with the
    counts, or an ``error`` line when the upstream reports an error or the stream ends
    before the answer did. After that, further input is ignored.
    """

    def __init__(self, app_endpoint: Endpoint, model: str, *, clock: Clock = time.time) -> None:
        if app_endpoint not in _OLLAMA_TEXT_ENDPOINTS:
            raise ValueError(f"no stream translation for {app_endpoint.path}")
        self._endpoint = app_endpoint
        self._model = model
        self._clock = clock
        self._lines = _SseLines()
        self._data: list[str] = []
        self._created_at: str | None = None
        self._finish_reason: object = None
        self._counts: dict[str, int] = {}
        self._tool_calls: dict[int, _ToolCallParts] = {}
        self._finished = False

    @property
    def finished(self) -> bool:
        """Whether the last line has been written."""
        return self._finished

    def feed(self, chunk: bytes) -> bytes:
        """The Ollama lines completed by ``chunk`` (empty when none is)."""
        if self._finished:
            return b""
        return b"".join(self._on_lines(self._lines.push(chunk)))

    def finish(self) -> bytes:
        """The lines still owed when the upstream stream ends, the last line included."""
        if self._finished:
            return b""
        out = self._on_lines([*self._lines.flush(), ""])
        if not self._finished:
            if self._finish_reason is None:
                out.append(self._error_line(_CUT_SHORT))
            else:
                out.extend(self._last_lines())
        return b"".join(out)

    def _on_lines(self, lines: Iterable[str]) -> list[bytes]:
        out: list[bytes] = []
        for line in lines:
            if self._finished:
                break
            out.extend(self._on_line(line))
        return out

    def _on_line(self, line: str) -> list[bytes]:
        if not line:
            data, self._data = "\n".join(self._data), []
            return self._on_event(data) if data else []
        if line.startswith(":"):
            return []  # a comment, such as a keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))
        return []

    def _on_event(self, data: str) -> list[bytes]:
        if data.strip() == "[DONE]":
            return self._last_lines()
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            return []
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk:
            return [self._error_line(translate_error(chunk)["error"])]
        return self._on_chunk(chunk)

    def _on_chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        self._created_at = _timestamp(chunk, self._clock)
        self._counts.update(_usage_counts(chunk.get("usage")))
        choice = _first_choice(chunk)
        if choice is None:
            return []
        delta = choice.get("delta")
        out = []
        if isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.append(self._line(content, done=False))
            self._collect_tool_calls(delta.get("tool_calls"))
        if choice.get("finish_reason") is not None:
            self._finish_reason = choice["finish_reason"]
            out.extend(self._tool_call_line())
        return out

    def _collect_tool_calls(self, fragments: object) -> None:
        if not isinstance(fragments, list):
            return
        for fragment in fragments:
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index", 0)
            parts = self._tool_calls.setdefault(
                index if _is_integer(index) else 0, _ToolCallParts()
            )
            if isinstance(fragment.get("id"), str):
                parts.call_id = fragment["id"]
            function = fragment.get("function")
            if isinstance(function, dict):
                parts.name += _text(function.get("name"))
                parts.arguments += _text(function.get("arguments"))

    def _tool_call_line(self) -> list[bytes]:
        if not self._tool_calls or self._endpoint is not Endpoint.OLLAMA_CHAT:
            return []
        calls = [
            {"id": parts.call_id, "function": {"name": parts.name, "arguments": parts.arguments}}
            for _, parts in sorted(self._tool_calls.items())
        ]
        self._tool_calls = {}
        line = self._document("", done=False)
        line["message"]["tool_calls"] = _ollama_tool_calls(calls)
        return [_encode(line) + b"\n"]

    def _last_lines(self) -> list[bytes]:
        lines = self._tool_call_line()
        last = self._document("", done=True)
        last["done_reason"] = _done_reason(self._finish_reason)
        last.update(self._counts)
        lines.append(_encode(last) + b"\n")
        self._finished = True
        return lines

    def _error_line(self, message: str) -> bytes:
        self._finished = True
        return _encode({"error": message}) + b"\n"

    def _line(self, text: str, *, done: bool) -> bytes:
        return _encode(self._document(text, done=done)) + b"\n"

    def _document(self, text: str, *, done: bool) -> dict[str, Any]:
        created_at = self._created_at or _timestamp({}, self._clock)
        line = _ollama_line(self._endpoint, self._model, created_at, text)
        line["done"] = done
        return line


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
