"""Translation from the Ollama API an application calls to an OpenAI-style upstream and back."""

import copy
import itertools
import json
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from sidecar.domain.api import Endpoint, Provider
from sidecar.domain.outcome import Rejection
from sidecar.providers.translate import (
    StreamTranslator,
    can_serve,
    needs_translation,
    response_content_type,
    translate_error,
    translate_request,
    translate_request_body,
    translate_response,
    translate_response_body,
    upstream_path,
)
from sidecar_demo.replies import ollama_generate, openai_chat
from sidecar_demo.specs import ModelServerSpec

GENERATE = Endpoint.OLLAMA_GENERATE
CHAT = Endpoint.OLLAMA_CHAT
OPENAI = Provider.OPENAI
OLLAMA = Provider.OLLAMA
MODEL = "gpt-4o-mini"
CREATED_AT = "2024-09-22T10:13:20Z"  # OpenAI's "created": 1727000000


def epoch_clock() -> float:
    return 0.0


PNG_BASE64 = "iVBORw0KGgoAAAAAAAAAAA=="
JPEG_BASE64 = "/9j/4AAAAAAAAAAA"
WEBP_BASE64 = "UklGRgAAAABXRUJQVlA4IA=="


# --- Paths and content types ----------------------------------------------------------------


@dataclass(frozen=True)
class PathCase:
    why: str
    endpoint: Endpoint
    provider: Provider
    translated: bool
    servable: bool
    path: str


PATH_CASES = [
    PathCase(
        "the seed scenario: Ollama generate on an OpenAI-style cluster goes to its chat API",
        GENERATE,
        OPENAI,
        True,
        True,
        "/v1/chat/completions",
    ),
    PathCase(
        "Ollama chat on an OpenAI-style cluster", CHAT, OPENAI, True, True, "/v1/chat/completions"
    ),
    PathCase("Ollama serves its own API natively", GENERATE, OLLAMA, False, True, "/api/generate"),
    PathCase("Ollama serves its own chat natively", CHAT, OLLAMA, False, True, "/api/chat"),
    PathCase(
        "Ollama also speaks the OpenAI API",
        Endpoint.OPENAI_CHAT,
        OLLAMA,
        False,
        True,
        "/v1/chat/completions",
    ),
    PathCase(
        "OpenAI to OpenAI is native",
        Endpoint.OPENAI_CHAT,
        OPENAI,
        False,
        True,
        "/v1/chat/completions",
    ),
    PathCase(
        "embeddings are not translated, so an OpenAI cluster cannot serve Ollama's",
        Endpoint.OLLAMA_EMBED,
        OPENAI,
        False,
        False,
        "/api/embed",
    ),
]


@pytest.mark.parametrize("case", PATH_CASES, ids=lambda case: case.why)
def test_paths_and_translation_needs(case: PathCase) -> None:
    assert needs_translation(case.endpoint, case.provider) is case.translated
    assert can_serve(case.endpoint, case.provider) is case.servable
    assert upstream_path(case.endpoint, case.provider) == case.path


@pytest.mark.parametrize(
    ("endpoint", "stream", "expected"),
    [
        (GENERATE, True, "application/x-ndjson"),  # Ollama streams NDJSON
        (CHAT, True, "application/x-ndjson"),
        (GENERATE, False, "application/json"),  # one JSON answer
        (Endpoint.OPENAI_CHAT, True, "text/event-stream"),  # OpenAI streams server-sent events
        (Endpoint.OPENAI_CHAT, False, "application/json"),
    ],
)
def test_response_content_type(endpoint: Endpoint, stream: bool, expected: str) -> None:
    assert response_content_type(endpoint, stream) == expected


# --- Requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestCase:
    why: str
    endpoint: Endpoint
    document: dict[str, Any]
    expected: dict[str, Any]
    provider: Provider = OPENAI


STREAMING = {"stream": True, "stream_options": {"include_usage": True}}

REQUEST_CASES = [
    RequestCase(
        "seed scenario: /api/generate streams by default, so the chat request streams with usage",
        GENERATE,
        {"model": "local", "prompt": "Why is the sky blue?", "system": "Be brief."},
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Why is the sky blue?"},
            ],
            **STREAMING,
        },
    ),
    RequestCase(
        "stream false asks for one answer, without stream options",
        GENERATE,
        {"model": "local", "prompt": "Hi", "stream": False},
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False},
    ),
    RequestCase(
        "a null stream is Ollama's default: streaming",
        GENERATE,
        {"model": "local", "prompt": "Hi", "stream": None},
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **STREAMING},
    ),
    RequestCase(
        "sampling options map to OpenAI fields; num_predict is max_tokens; others are dropped",
        GENERATE,
        {
            "model": "local",
            "prompt": "Hi",
            "stream": False,
            "options": {
                "temperature": 0.2,
                "top_p": 0.9,
                "num_predict": 64,
                "stop": ["\n\n", "END"],
                "seed": 7,
                "presence_penalty": 0.5,
                "frequency_penalty": 0,
                "top_k": 40,
                "num_ctx": 4096,
                "mirostat": 1,
            },
        },
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": False,
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 64,
            "stop": ["\n\n", "END"],
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": 0,
        },
    ),
    RequestCase(
        "num_predict -1 (no limit) and null options give no max_tokens",
        GENERATE,
        {
            "model": "local",
            "prompt": "Hi",
            "stream": False,
            "options": {"num_predict": -1, "temperature": None},
        },
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False},
    ),
    RequestCase(
        'format "json" asks for a JSON object',
        GENERATE,
        {"model": "local", "prompt": "Hi", "stream": False, "format": "json"},
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": False,
            "response_format": {"type": "json_object"},
        },
    ),
    RequestCase(
        "a format schema (structured output) becomes a json_schema response format",
        GENERATE,
        {"model": "local", "prompt": "Hi", "stream": False, "format": {"type": "object"}},
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": False,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": {"type": "object"}},
            },
        },
    ),
    RequestCase(
        "fields with no OpenAI counterpart are dropped; an empty system and suffix mean none",
        GENERATE,
        {
            "model": "local",
            "prompt": "Hi",
            "stream": False,
            "system": "",
            "suffix": "",
            "keep_alive": "5m",
            "raw": True,
            "template": "{{ .Prompt }}",
            "context": [1, 2, 3],
            "think": False,
            "format": "",
        },
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False},
    ),
    RequestCase(
        "images become image parts with data URLs of the sniffed type",
        GENERATE,
        {"model": "local", "prompt": "What is this?", "stream": False, "images": [PNG_BASE64]},
        {
            "model": MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{PNG_BASE64}"},
                        },
                    ],
                }
            ],
            "stream": False,
        },
    ),
    RequestCase(
        "chat messages keep their roles and text; a null content is empty",
        CHAT,
        {
            "model": "local",
            "stream": False,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi", "images": [JPEG_BASE64, WEBP_BASE64]},
                {"role": "assistant", "content": None, "thinking": "hmm"},
            ],
        },
        {
            "model": MODEL,
            "stream": False,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Hi"},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/jpeg;base64,{JPEG_BASE64}"},
                        },
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/webp;base64,{WEBP_BASE64}"},
                        },
                    ],
                },
                {"role": "assistant", "content": ""},
            ],
        },
    ),
    RequestCase(
        "tool calls get ids and JSON-text arguments; tool results name their call's id",
        CHAT,
        {
            "model": "local",
            "tools": [{"type": "function", "function": {"name": "weather"}}],
            "messages": [
                {"role": "user", "content": "Weather in Paris and time in Oslo?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                        {"id": "given", "function": {"name": "clock", "arguments": {}}},
                    ],
                },
                {"role": "tool", "tool_name": "clock", "content": "12:00"},
                {"role": "tool", "content": "sunny"},
            ],
        },
        {
            "model": MODEL,
            "tools": [{"type": "function", "function": {"name": "weather"}}],
            "messages": [
                {"role": "user", "content": "Weather in Paris and time in Oslo?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_0",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "given",
                            "type": "function",
                            "function": {"name": "clock", "arguments": "{}"},
                        },
                    ],
                },
                {"role": "tool", "content": "12:00", "tool_call_id": "given"},
                {"role": "tool", "content": "sunny", "tool_call_id": "call_0"},
            ],
            **STREAMING,
        },
    ),
    RequestCase(
        "no translation for a native pair: only the model changes",
        GENERATE,
        {"model": "local", "prompt": "Hi", "keep_alive": "5m"},
        {"model": MODEL, "prompt": "Hi", "keep_alive": "5m"},
        provider=OLLAMA,
    ),
]


@pytest.mark.parametrize("case", REQUEST_CASES, ids=lambda case: case.why)
def test_translate_request(case: RequestCase) -> None:
    original = copy.deepcopy(case.document)
    translated = translate_request(case.endpoint, case.provider, case.document, MODEL)
    assert translated == case.expected
    assert case.document == original, "the app's document is not modified"


def test_translate_request_body_is_compact_utf8_json() -> None:
    document = {"model": "local", "prompt": "Grüße ☀", "stream": False}
    body = translate_request_body(GENERATE, OPENAI, document, MODEL)
    assert isinstance(body, bytes)
    assert "Grüße ☀".encode() in body
    assert b": " not in body
    assert json.loads(body)["messages"] == [{"role": "user", "content": "Grüße ☀"}]


@dataclass(frozen=True)
class RefusalCase:
    why: str
    endpoint: Endpoint
    document: dict[str, Any]
    message_part: str


REFUSAL_CASES = [
    RefusalCase("generate needs a prompt", GENERATE, {"model": "m"}, "'prompt' is required"),
    RefusalCase("the prompt must be text", GENERATE, {"model": "m", "prompt": 3}, "'prompt'"),
    RefusalCase(
        "fill-in-the-middle cannot be expressed as chat",
        GENERATE,
        {"model": "m", "prompt": "def f(", "suffix": "return x"},
        "'suffix'",
    ),
    RefusalCase(
        "stream must be a boolean",
        GENERATE,
        {"model": "m", "prompt": "", "stream": "yes"},
        "'stream'",
    ),
    RefusalCase(
        "system must be text",
        GENERATE,
        {"model": "m", "prompt": "", "system": ["x"]},
        "'system'",
    ),
    RefusalCase(
        "options must be an object",
        GENERATE,
        {"model": "m", "prompt": "", "options": [1]},
        "'options'",
    ),
    RefusalCase(
        "an option of the wrong type is named",
        GENERATE,
        {"model": "m", "prompt": "", "options": {"temperature": "hot"}},
        "'options.temperature' must be a number",
    ),
    RefusalCase(
        "a boolean is not an integer seed",
        GENERATE,
        {"model": "m", "prompt": "", "options": {"seed": True}},
        "'options.seed' must be an integer",
    ),
    RefusalCase(
        "an unknown format", GENERATE, {"model": "m", "prompt": "", "format": "xml"}, "'format'"
    ),
    RefusalCase(
        "images must be base64 strings",
        GENERATE,
        {"model": "m", "prompt": "", "images": [1]},
        "'images'",
    ),
    RefusalCase(
        "an image of unknown type would be misread upstream",
        GENERATE,
        {"model": "m", "prompt": "", "images": ["aGVsbG8gd29ybGQ="]},
        "PNG, JPEG, GIF or WebP",
    ),
    RefusalCase("chat needs messages", CHAT, {"model": "m"}, "'messages' is required"),
    RefusalCase(
        "each message needs a role", CHAT, {"model": "m", "messages": [{"content": "x"}]}, "'role'"
    ),
    RefusalCase(
        "message content must be text",
        CHAT,
        {"model": "m", "messages": [{"role": "user", "content": {"a": 1}}]},
        "'content'",
    ),
    RefusalCase(
        "a tool result with no call before it cannot name a call id",
        CHAT,
        {"model": "m", "messages": [{"role": "tool", "content": "42"}]},
        "must answer a tool call",
    ),
    RefusalCase(
        "a tool call needs a function name",
        CHAT,
        {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]},
        "'function'",
    ),
]


@pytest.mark.parametrize("case", REFUSAL_CASES, ids=lambda case: case.why)
def test_untranslatable_requests_are_refused(case: RefusalCase) -> None:
    refusal = translate_request(case.endpoint, OPENAI, case.document, MODEL)
    assert isinstance(refusal, Rejection)
    assert (refusal.status, refusal.code) == (400, "invalid_body")
    assert case.message_part in refusal.message
    assert translate_request_body(case.endpoint, OPENAI, case.document, MODEL) == refusal


# --- Buffered answers and errors ------------------------------------------------------------


def chat_completion(
    content: str | None = "Blue light scatters.",
    finish_reason: str = "stop",
    **message: Any,
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1727000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
    }


@dataclass(frozen=True)
class AnswerCase:
    why: str
    endpoint: Endpoint
    answer: object
    expected: dict[str, Any]


COUNTS = {"prompt_eval_count": 12, "eval_count": 4}

ANSWER_CASES = [
    AnswerCase(
        "a generate answer carries the text in 'response', with the token counts",
        GENERATE,
        chat_completion(),
        {
            "model": MODEL,
            "created_at": CREATED_AT,
            "response": "Blue light scatters.",
            "done": True,
            "done_reason": "stop",
            **COUNTS,
        },
    ),
    AnswerCase(
        "a chat answer carries an assistant message; a cut answer says length",
        CHAT,
        chat_completion(finish_reason="length"),
        {
            "model": MODEL,
            "created_at": CREATED_AT,
            "message": {"role": "assistant", "content": "Blue light scatters."},
            "done": True,
            "done_reason": "length",
            **COUNTS,
        },
    ),
    AnswerCase(
        "tool calls come back with object arguments, and the answer is done with stop",
        CHAT,
        chat_completion(
            None,
            "tool_calls",
            tool_calls=[
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                },
                {"type": "function", "function": {"name": "broken", "arguments": "{oops"}},
            ],
        ),
        {
            "model": MODEL,
            "created_at": CREATED_AT,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_9",
                        "function": {"name": "weather", "arguments": {"city": "Paris"}},
                    },
                    {"function": {"name": "broken", "arguments": {}}},
                ],
            },
            "done": True,
            "done_reason": "stop",
            **COUNTS,
        },
    ),
    AnswerCase(
        "no 'created' or usage: the clock dates it and the counts are left out",
        GENERATE,
        {"choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": None}]},
        {
            "model": MODEL,
            "created_at": "1970-01-01T00:00:00Z",
            "response": "ok",
            "done": True,
            "done_reason": "stop",
        },
    ),
    AnswerCase(
        "an OpenAI error body becomes an Ollama error",
        GENERATE,
        {"error": {"message": "Rate limit reached", "type": "requests", "code": None}},
        {"error": "Rate limit reached"},
    ),
    AnswerCase(
        "an answer without choices cannot be read",
        GENERATE,
        {"object": "chat.completion", "choices": []},
        {"error": "The upstream answer could not be read."},
    ),
    AnswerCase(
        "an answer that is not an object cannot be read",
        CHAT,
        ["nope"],
        {"error": "The upstream answer could not be read."},
    ),
]


@pytest.mark.parametrize("case", ANSWER_CASES, ids=lambda case: case.why)
def test_translate_response(case: AnswerCase) -> None:
    assert translate_response(case.endpoint, case.answer, MODEL, clock=epoch_clock) == case.expected


@pytest.mark.parametrize(
    ("why", "body", "message"),
    [
        ("OpenAI's shape", {"error": {"message": "Invalid key"}}, "Invalid key"),
        ("already Ollama's shape", {"error": "model not found"}, "model not found"),
        ("a bare message", {"message": "overloaded"}, "overloaded"),
        ("FastAPI's detail", {"detail": "Not Found"}, "Not Found"),
        ("nothing to read", {"error": {"code": 500}}, "The upstream server reported an error."),
        ("not an object", "boom", "The upstream server reported an error."),
    ],
)
def test_translate_error(why: str, body: object, message: str) -> None:
    assert translate_error(body) == {"error": message}, why


@pytest.mark.parametrize(
    ("why", "raw", "status", "expected"),
    [
        (
            "a success is an answer",
            json.dumps(chat_completion()).encode(),
            200,
            {
                "model": MODEL,
                "created_at": CREATED_AT,
                "response": "Blue light scatters.",
                "done": True,
                "done_reason": "stop",
                **COUNTS,
            },
        ),
        (
            "an OpenAI error status with its body",
            b'{"error": {"message": "You exceeded your quota", "type": "insufficient_quota"}}',
            429,
            {"error": "You exceeded your quota"},
        ),
        (
            "a proxy's plain-text error lends its first line",
            b"upstream connect error or disconnect/reset before headers\nmore",
            503,
            {"error": "upstream connect error or disconnect/reset before headers"},
        ),
        (
            "an HTML error page is replaced by the status",
            b"<html><body>Bad Gateway</body></html>",
            502,
            {"error": "The upstream server answered with HTTP status 502."},
        ),
        (
            "an empty error body",
            b"",
            500,
            {"error": "The upstream server answered with HTTP status 500."},
        ),
        (
            "a success that is not JSON cannot be read",
            b"OK",
            200,
            {"error": "The upstream answer could not be read."},
        ),
    ],
)
def test_translate_response_body(why: str, raw: bytes, status: int, expected: object) -> None:
    body = translate_response_body(GENERATE, raw, status, MODEL, clock=epoch_clock)
    assert json.loads(body) == expected, why


# --- Streams --------------------------------------------------------------------------------


def sse(*events: dict[str, Any] | str) -> bytes:
    """An OpenAI stream: one data event per item, compact JSON like OpenAI's."""
    parts = []
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)
        parts.append(f"data: {data}\n\n")
    return "".join(parts).encode()


def chunk(
    delta: dict[str, Any] | None = None, finish_reason: str | None = None, **extra: Any
) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": "chatcmpl-B9",
        "object": "chat.completion.chunk",
        "created": 1727000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_1",
        "choices": [choice],
        "usage": None,
        **extra,
    }


USAGE_CHUNK = {
    **chunk(),
    "choices": [],
    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
}

# What OpenAI sends for a streamed chat with include_usage: a role delta with empty
# content, content deltas (multi-byte text included), the finish chunk, a usage chunk
# with no choices, then [DONE]; with a keep-alive comment between events.
REAL_STREAM = (
    sse(chunk({"role": "assistant", "content": "", "refusal": None}))
    + sse(chunk({"content": "Rayleigh "}))
    + b": ping\n\n"
    + sse(chunk({"content": "scattering — naïve ☀️ "}))
    + sse(chunk({"content": "light."}))
    + sse(chunk({}, "stop"))
    + sse(USAGE_CHUNK)
    + sse("[DONE]")
)


def generate_line(text: str) -> dict[str, Any]:
    return {"model": MODEL, "created_at": CREATED_AT, "response": text, "done": False}


GENERATE_DONE = {
    "model": MODEL,
    "created_at": CREATED_AT,
    "response": "",
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 9,
    "eval_count": 3,
}

EXPECTED_GENERATE_LINES = [
    generate_line("Rayleigh "),
    generate_line("scattering — naïve ☀️ "),
    generate_line("light."),
    GENERATE_DONE,
]


def run_stream(
    pieces: list[bytes], endpoint: Endpoint = GENERATE
) -> tuple[list[bytes], StreamTranslator]:
    translator = StreamTranslator(endpoint, MODEL, clock=epoch_clock)
    outputs = [translator.feed(piece) for piece in pieces]
    outputs.append(translator.finish())
    return outputs, translator


def ndjson(outputs: list[bytes]) -> list[dict[str, Any]]:
    for output in outputs:
        assert output == b"" or output.endswith(b"\n"), f"partial line emitted: {output!r}"
    text = b"".join(outputs).decode("utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_a_real_stream_becomes_ollama_ndjson() -> None:
    outputs, translator = run_stream([REAL_STREAM])
    assert ndjson(outputs) == EXPECTED_GENERATE_LINES
    assert outputs[-1] == b"", "[DONE] already wrote the last line; finish() adds nothing"
    assert translator.finished


def test_the_output_is_compact_utf8() -> None:
    outputs, _ = run_stream([REAL_STREAM])
    assert "naïve ☀️".encode() in outputs[0]
    assert b'"done":false' in outputs[0]


def split_everywhere(stream: bytes) -> list[list[bytes]]:
    """The stream in two pieces at every offset, and one byte at a time."""
    splits = [[stream[:offset], stream[offset:]] for offset in range(len(stream) + 1)]
    splits.append([stream[i : i + 1] for i in range(len(stream))])
    return splits


def random_splits(stream: bytes, count: int) -> list[list[bytes]]:
    rng = random.Random(20240922)
    splits = []
    for _ in range(count):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(2, 12)))
        bounds = [0, *cuts, len(stream)]
        splits.append([stream[a:b] for a, b in itertools.pairwise(bounds)])
    return splits


def multiline_sse(event: dict[str, Any]) -> bytes:
    """One event whose JSON spans several ``data:`` lines (rare upstream, but valid SSE)."""
    lines = json.dumps(event, indent=1).splitlines()
    return ("".join(f"data: {line}\n" for line in lines) + "\n").encode()


# The real stream with an id/event field and a multi-line event before [DONE]: it only
# reads right if a blank line, and nothing else, ends an event.
FUZZ_STREAM = REAL_STREAM.replace(
    sse(chunk({"content": "light."})),
    b"id: 7\nevent: message\n" + multiline_sse(chunk({"content": "light."})),
)
assert FUZZ_STREAM != REAL_STREAM

LINE_ENDINGS = {
    "LF": FUZZ_STREAM,
    "CRLF": FUZZ_STREAM.replace(b"\n", b"\r\n"),
    "CR": FUZZ_STREAM.replace(b"\n", b"\r"),
}


@pytest.mark.parametrize("ending", LINE_ENDINGS)
def test_any_chunk_boundaries_give_the_same_output(ending: str) -> None:
    stream = LINE_ENDINGS[ending]
    whole, _ = run_stream([stream])
    expected = b"".join(whole)
    assert ndjson(whole) == EXPECTED_GENERATE_LINES
    for pieces in split_everywhere(stream) + random_splits(stream, 200):
        outputs, _ = run_stream(pieces)
        assert b"".join(outputs) == expected, f"split into {[len(piece) for piece in pieces]}"
        ndjson(outputs)  # every output is whole lines


def test_lines_are_sent_as_soon_as_their_event_is_complete() -> None:
    translator = StreamTranslator(GENERATE, MODEL, clock=epoch_clock)
    first = sse(chunk({"content": "Hel"}))
    assert translator.feed(first[:-1]) == b"", "no blank line yet: the event may go on"
    assert json.loads(translator.feed(first[-1:])) == generate_line("Hel")


@dataclass(frozen=True)
class StreamCase:
    why: str
    stream: bytes
    expected: list[dict[str, Any]]
    endpoint: Endpoint = GENERATE
    extra_events: list[bytes] = field(default_factory=list)


NO_COUNTS = {"prompt_eval_count": None, "eval_count": None}  # no usage chunk: left out
ERROR_LINE = {"error": "The upstream stream ended before the answer was complete."}

STREAM_CASES = [
    StreamCase(
        "comments, event names, ids and retry lines are not data",
        b": keep-alive\nevent: message\nid: 1\nretry: 10\n"
        + sse(chunk({"content": "a"}))
        + b":\n\n"
        + sse(chunk({}, "length"), "[DONE]"),
        [generate_line("a"), {**GENERATE_DONE, **NO_COUNTS, "done_reason": "length"}],
    ),
    StreamCase(
        "an event's data may span several data lines, joined by newlines",
        b'data: {"choices": [{"index": 0,\ndata: "delta": {"content": "x"}}],\n'
        b'data: "created": 1727000000}\n\n' + sse(chunk({}, "stop"), "[DONE]"),
        [
            generate_line("x"),
            {**GENERATE_DONE, **NO_COUNTS},
        ],
    ),
    StreamCase(
        "without [DONE], the end of the stream after a finish reason still ends the answer",
        sse(chunk({"content": "a"}), chunk({}, "stop"), USAGE_CHUNK),
        [generate_line("a"), GENERATE_DONE],
    ),
    StreamCase(
        "a last event without its blank line is still read at the end",
        sse(chunk({"content": "a"}), chunk({}, "stop")) + b"data: [DONE]",
        [generate_line("a"), {**GENERATE_DONE, **NO_COUNTS}],
    ),
    StreamCase(
        "a stream cut before the finish reason ends with an error, not a false done",
        sse(chunk({"content": "a"})) + b'data: {"choices": [{"ind',
        [generate_line("a"), ERROR_LINE],
    ),
    StreamCase("an empty stream is an error too", b"", [ERROR_LINE]),
    StreamCase(
        "an error event ends the stream with an Ollama error line",
        sse(chunk({"content": "a"}), {"error": {"message": "server overloaded"}}),
        [generate_line("a"), {"error": "server overloaded"}],
        extra_events=[sse(chunk({"content": "late"}), "[DONE]")],
    ),
    StreamCase(
        "nothing is read after [DONE]",
        sse(chunk({"content": "a"}), chunk({}, "stop"), "[DONE]"),
        [generate_line("a"), {**GENERATE_DONE, **NO_COUNTS}],
        extra_events=[sse(chunk({"content": "late"}), "[DONE]")],
    ),
    StreamCase(
        "events that are not chunk objects are skipped",
        sse("not json", "[1, 2]", chunk({"content": "a"}), chunk({}, "stop"), "[DONE]"),
        [generate_line("a"), {**GENERATE_DONE, **NO_COUNTS}],
    ),
    StreamCase(
        "a chat stream carries assistant messages",
        REAL_STREAM,
        [
            {
                "model": MODEL,
                "created_at": CREATED_AT,
                "message": {"role": "assistant", "content": text},
                "done": False,
            }
            for text in ("Rayleigh ", "scattering — naïve ☀️ ", "light.")
        ]
        + [
            {
                "model": MODEL,
                "created_at": CREATED_AT,
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 9,
                "eval_count": 3,
            }
        ],
        endpoint=CHAT,
    ),
    StreamCase(
        "streamed tool-call fragments are assembled into one tool-call line",
        sse(
            chunk(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": ""},
                        },
                    ],
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_2",
                            "function": {"name": "clock", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk({}, "tool_calls"),
            USAGE_CHUNK,
            "[DONE]",
        ),
        [
            {
                "model": MODEL,
                "created_at": CREATED_AT,
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "function": {"name": "weather", "arguments": {"city": "Paris"}},
                        },
                        {"id": "call_2", "function": {"name": "clock", "arguments": {}}},
                    ],
                },
                "done": False,
            },
            {
                "model": MODEL,
                "created_at": CREATED_AT,
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 9,
                "eval_count": 3,
            },
        ],
        endpoint=CHAT,
    ),
]


def without_nones(line: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in line.items() if value is not None}


@pytest.mark.parametrize("case", STREAM_CASES, ids=lambda case: case.why)
def test_stream_cases(case: StreamCase) -> None:
    translator = StreamTranslator(case.endpoint, MODEL, clock=epoch_clock)
    outputs = [translator.feed(case.stream)]
    outputs += [translator.feed(event) for event in case.extra_events]
    outputs.append(translator.finish())
    outputs.append(translator.finish())
    assert ndjson(outputs) == [without_nones(line) for line in case.expected]
    assert translator.finished


def test_the_last_line_is_written_exactly_once() -> None:
    translator = StreamTranslator(GENERATE, MODEL, clock=epoch_clock)
    written = translator.feed(REAL_STREAM) + translator.feed(REAL_STREAM)
    written += translator.finish() + translator.finish() + translator.feed(b"data: [DONE]\n\n")
    assert [line["done"] for line in ndjson([written])] == [False, False, False, True]


def test_only_ollama_text_endpoints_have_a_stream_translator() -> None:
    with pytest.raises(ValueError, match="no stream translation"):
        StreamTranslator(Endpoint.OPENAI_CHAT, MODEL)


# --- The seed scenario against the demo servers ---------------------------------------------


SPEC = ModelServerSpec(name="cheap", api="openai", model="gpt-4o-mini", port=0)


@pytest.mark.parametrize("stream", [True, False])
def test_seed_scenario_round_trip_matches_a_native_ollama_answer(stream: bool) -> None:
    """/api/generate through an OpenAI-style server answers as Ollama would, text and counts."""
    app_request: dict[str, Any] = {"model": "local", "prompt": "Why is the sky blue today?"}
    if not stream:
        app_request["stream"] = False
    upstream_request = translate_request(GENERATE, OPENAI, app_request, SPEC.model)
    assert isinstance(upstream_request, dict)

    upstream = openai_chat(SPEC, upstream_request)
    native = ollama_generate(SPEC, app_request)
    if stream:
        outputs, _ = run_stream(list(upstream.chunks))
        lines = ndjson(outputs)
        native_lines = [json.loads(line) for line in native.chunks]
    else:
        lines = [translate_response(GENERATE, json.loads(upstream.chunks[0]), SPEC.model)]
        native_lines = [json.loads(native.chunks[0])]

    assert "".join(line["response"] for line in lines) == "".join(
        line["response"] for line in native_lines
    )
    compared = ("model", "done", "done_reason", "prompt_eval_count", "eval_count")
    assert {key: lines[-1][key] for key in compared} == {
        key: native_lines[-1][key] for key in compared
    }
    assert response_content_type(GENERATE, stream) == native.content_type
