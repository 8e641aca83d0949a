"""Token usage read from upstream answers, whole or streamed, and the usage request option."""

import copy
import json
from typing import Any

import pytest

from sidecar.domain.api import Endpoint
from sidecar.providers.usage import (
    StreamUsageReader,
    Usage,
    ensure_stream_usage,
    usage_from_json,
)

OPENAI_CHAT = Endpoint.OPENAI_CHAT
OPENAI_COMPLETIONS = Endpoint.OPENAI_COMPLETIONS
OPENAI_EMBEDDINGS = Endpoint.OPENAI_EMBEDDINGS
OLLAMA_CHAT = Endpoint.OLLAMA_CHAT
OLLAMA_GENERATE = Endpoint.OLLAMA_GENERATE
OLLAMA_EMBED = Endpoint.OLLAMA_EMBED

# An OpenAI chat stream as the API sends it with stream_options.include_usage set.
_ENVELOPE = (
    '"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk",'
    '"created":1727000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1"'
)
OPENAI_STREAM = (
    f"data: {{{_ENVELOPE},"
    '"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
    '"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    f"data: {{{_ENVELOPE},"
    '"choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],'
    '"usage":null}\n\n'
    f"data: {{{_ENVELOPE},"
    '"choices":[{"index":0,"delta":{"content":" there, what usage?"},"logprobs":null,'
    '"finish_reason":null}],"usage":null}\n\n'
    f"data: {{{_ENVELOPE},"
    '"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}\n\n'
    f"data: {{{_ENVELOPE},"
    '"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,'
    '"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}\n\n'
    "data: [DONE]\n\n"
).encode()
OPENAI_STREAM_USAGE = Usage(9, 4)

# An Ollama /api/generate stream (NDJSON): the counts are on the done line.
OLLAMA_STREAM = (
    b'{"model":"llama3.2","created_at":"2024-09-22T10:13:20.120Z","response":"The",'
    b'"done":false}\n'
    b'{"model":"llama3.2","created_at":"2024-09-22T10:13:20.150Z","response":" sky",'
    b'"done":false}\n'
    b'{"model":"llama3.2","created_at":"2024-09-22T10:13:20.180Z","response":"","done":true,'
    b'"done_reason":"stop","context":[128006,9125,128007],"total_duration":10706818083,'
    b'"load_duration":6338219291,"prompt_eval_count":26,"prompt_eval_duration":130079000,'
    b'"eval_count":259,"eval_duration":4232710000}\n'
)
OLLAMA_STREAM_USAGE = Usage(26, 259)


def test_usage_total() -> None:
    assert Usage(3, 4).total == 7


# --- usage_from_json ------------------------------------------------------------------------

OPENAI_USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


@pytest.mark.parametrize(
    ("endpoint", "answer", "expected"),
    [
        pytest.param(OPENAI_CHAT, {"usage": OPENAI_USAGE}, Usage(12, 5), id="chat"),
        pytest.param(OPENAI_COMPLETIONS, {"usage": OPENAI_USAGE}, Usage(12, 5), id="completions"),
        pytest.param(
            OPENAI_EMBEDDINGS,
            {"usage": {"prompt_tokens": 8, "total_tokens": 8}},
            Usage(8, 0),
            id="embeddings",
        ),
        pytest.param(
            OPENAI_EMBEDDINGS, {"usage": {"total_tokens": 8}}, Usage(8, 0), id="embeddings-total"
        ),
        pytest.param(
            OPENAI_CHAT,
            {"usage": {"prompt_tokens": 12, "total_tokens": 17}},
            Usage(12, 5),
            id="chat-no-completion-count",
        ),
        pytest.param(
            OPENAI_CHAT,
            {"usage": {"completion_tokens": 5, "total_tokens": 17}},
            Usage(12, 5),
            id="chat-no-prompt-count",
        ),
        pytest.param(
            OPENAI_CHAT,
            {"usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}},
            Usage(0, 0),
            id="zeros",
        ),
        pytest.param(OPENAI_CHAT, {"choices": [], "usage": None}, None, id="usage-null"),
        pytest.param(OPENAI_CHAT, {"choices": []}, None, id="usage-missing"),
        pytest.param(OPENAI_CHAT, {"usage": "lots"}, None, id="usage-string"),
        pytest.param(OPENAI_CHAT, {"usage": {}}, None, id="usage-empty"),
        pytest.param(OPENAI_CHAT, {"usage": {"prompt_tokens": 3}}, None, id="only-prompt"),
        pytest.param(
            OPENAI_CHAT,
            {"usage": {"prompt_tokens": 20, "total_tokens": 17}},
            None,
            id="total-below-prompt",
        ),
        pytest.param(
            OPENAI_CHAT,
            {"usage": {"prompt_tokens": "12", "completion_tokens": 5}},
            None,
            id="count-as-string",
        ),
        pytest.param(
            OPENAI_CHAT,
            {"usage": {"prompt_tokens": 1.5, "completion_tokens": 5}},
            None,
            id="count-as-float",
        ),
        pytest.param(
            OPENAI_CHAT,
            {"usage": {"prompt_tokens": True, "completion_tokens": 5}},
            None,
            id="count-as-bool",
        ),
        pytest.param(
            OPENAI_CHAT,
            {"usage": {"prompt_tokens": -1, "completion_tokens": 5}},
            None,
            id="negative-count",
        ),
        pytest.param(OPENAI_EMBEDDINGS, {"usage": {}}, None, id="embeddings-empty"),
        pytest.param(OPENAI_CHAT, [OPENAI_USAGE], None, id="answer-list"),
        pytest.param(OPENAI_CHAT, None, None, id="answer-null"),
        pytest.param(OPENAI_CHAT, "usage", None, id="answer-string"),
        pytest.param(
            OLLAMA_CHAT,
            {"done": True, "prompt_eval_count": 26, "eval_count": 290},
            Usage(26, 290),
            id="ollama-chat",
        ),
        pytest.param(
            OLLAMA_GENERATE,
            {"done": True, "prompt_eval_count": 26, "eval_count": 290},
            Usage(26, 290),
            id="ollama-generate",
        ),
        pytest.param(
            OLLAMA_GENERATE,
            {"prompt_eval_count": 26, "eval_count": 290},
            Usage(26, 290),
            id="ollama-no-done-field",
        ),
        pytest.param(
            OLLAMA_GENERATE,
            {"done": True, "eval_count": 290},
            Usage(0, 290),
            id="ollama-prompt-cached",
        ),
        pytest.param(
            OLLAMA_GENERATE,
            {"done": False, "prompt_eval_count": 26, "eval_count": 290},
            None,
            id="ollama-not-done",
        ),
        pytest.param(
            OLLAMA_GENERATE, {"done": True, "prompt_eval_count": 26}, None, id="ollama-no-eval"
        ),
        pytest.param(
            OLLAMA_CHAT,
            {"done": True, "prompt_eval_count": 26, "eval_count": None},
            None,
            id="ollama-eval-null",
        ),
        pytest.param(
            OLLAMA_CHAT,
            {"done": True, "prompt_eval_count": "x", "eval_count": 4},
            Usage(0, 4),
            id="ollama-odd-prompt",
        ),
        pytest.param(OLLAMA_CHAT, {"error": "model not found"}, None, id="ollama-error"),
        pytest.param(
            OLLAMA_EMBED,
            {"model": "all-minilm", "embeddings": [[0.1]], "prompt_eval_count": 8},
            Usage(8, 0),
            id="ollama-embed",
        ),
        pytest.param(OLLAMA_EMBED, {"embeddings": [[0.1]]}, None, id="ollama-embed-no-count"),
        pytest.param(OLLAMA_EMBED, ["x"], None, id="ollama-answer-list"),
        pytest.param(OLLAMA_CHAT, {"usage": OPENAI_USAGE}, None, id="openai-shape-for-ollama"),
        pytest.param(
            OPENAI_CHAT,
            {"prompt_eval_count": 1, "eval_count": 2},
            None,
            id="ollama-shape-for-openai",
        ),
    ],
)
def test_usage_from_json(endpoint: Endpoint, answer: object, expected: Usage | None) -> None:
    assert usage_from_json(endpoint, answer) == expected


# --- StreamUsageReader ----------------------------------------------------------------------


def read_stream(endpoint: Endpoint, chunks: list[bytes], **options: int) -> Usage | None:
    reader = StreamUsageReader(endpoint, **options)
    for chunk in chunks:
        reader.feed(chunk)
    return reader.usage


def sse(*events: str) -> bytes:
    return "".join(f"data: {event}\n\n" for event in events).encode()


USAGE_EVENT = '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
DELTA_EVENT = '{"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}'


@pytest.mark.parametrize(
    ("endpoint", "stream", "expected"),
    [
        pytest.param(OPENAI_CHAT, OPENAI_STREAM, OPENAI_STREAM_USAGE, id="openai-real"),
        pytest.param(
            OPENAI_CHAT, OPENAI_STREAM.replace(b"\n", b"\r\n"), OPENAI_STREAM_USAGE, id="crlf"
        ),
        pytest.param(
            OPENAI_CHAT, OPENAI_STREAM.replace(b"\n", b"\r"), OPENAI_STREAM_USAGE, id="cr-only"
        ),
        pytest.param(OPENAI_CHAT, b"\xef\xbb\xbf" + OPENAI_STREAM, OPENAI_STREAM_USAGE, id="bom"),
        pytest.param(
            OPENAI_CHAT,
            OPENAI_STREAM.replace(b"data: [DONE]\n\n", b""),
            OPENAI_STREAM_USAGE,
            id="no-done-marker",
        ),
        pytest.param(
            OPENAI_CHAT,
            OPENAI_STREAM.rstrip(b"\n").removesuffix(b"data: [DONE]").rstrip(b"\n"),
            OPENAI_STREAM_USAGE,
            id="last-line-unterminated",
        ),
        pytest.param(
            OPENAI_CHAT,
            b": keep-alive\n\n: usage comment\n\nevent: message\n" + sse(USAGE_EVENT),
            Usage(3, 2),
            id="comments-and-fields",
        ),
        pytest.param(
            OPENAI_CHAT,
            sse(USAGE_EVENT).replace(b"data: ", b"data:"),
            Usage(3, 2),
            id="data-without-space",
        ),
        pytest.param(OPENAI_CHAT, sse(DELTA_EVENT, "[DONE]"), None, id="no-usage"),
        pytest.param(OPENAI_CHAT, b"", None, id="empty"),
        pytest.param(
            OPENAI_CHAT,
            sse(DELTA_EVENT, '{"usage": {"prompt_tokens": 1, "completion_tokens": 1}}', "[DONE]")
            + b"data: {not json, usage}\n\n",
            Usage(1, 1),
            id="garbage-after-usage",
        ),
        pytest.param(
            OPENAI_CHAT,
            sse(
                '{"choices":[{"delta":{}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}',
                '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}',
            ),
            Usage(3, 7),
            id="last-usage-wins",
        ),
        pytest.param(
            OPENAI_CHAT,
            sse('{"error":{"message":"usage limit","type":"server_error"}}'),
            None,
            id="error-event",
        ),
        pytest.param(
            OPENAI_COMPLETIONS,
            sse(
                '{"choices":[{"text":"hi","index":0}]}',
                '{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1}}',
                "[DONE]",
            ),
            Usage(4, 1),
            id="openai-completions",
        ),
        pytest.param(OLLAMA_GENERATE, OLLAMA_STREAM, OLLAMA_STREAM_USAGE, id="ollama-real"),
        pytest.param(
            OLLAMA_GENERATE,
            OLLAMA_STREAM.replace(b"\n", b"\r\n"),
            OLLAMA_STREAM_USAGE,
            id="ollama-crlf",
        ),
        pytest.param(
            OLLAMA_GENERATE,
            OLLAMA_STREAM.rstrip(b"\n"),
            OLLAMA_STREAM_USAGE,
            id="ollama-last-line-unterminated",
        ),
        pytest.param(
            OLLAMA_GENERATE,
            b"\n\n" + OLLAMA_STREAM.replace(b"\n", b"\n\n"),
            OLLAMA_STREAM_USAGE,
            id="ollama-blank-lines",
        ),
        pytest.param(
            OLLAMA_CHAT,
            b'{"message":{"role":"assistant","content":"eval_count"},"done":false}\n'
            b'{"message":{"role":"assistant","content":""},"done":true,'
            b'"prompt_eval_count":11,"eval_count":2}\n',
            Usage(11, 2),
            id="ollama-chat",
        ),
        pytest.param(
            OLLAMA_GENERATE,
            OLLAMA_STREAM.rsplit(b"\n", 2)[0] + b"\n",
            None,
            id="ollama-cut-before-done",
        ),
        pytest.param(
            OLLAMA_GENERATE,
            b'{"response":"a","done":false,"eval_count":1}\n{"error":"out of memory"}\n',
            None,
            id="ollama-error-line",
        ),
    ],
)
def test_stream_usage(endpoint: Endpoint, stream: bytes, expected: Usage | None) -> None:
    assert read_stream(endpoint, [stream]) == expected


@pytest.mark.parametrize(
    ("endpoint", "stream", "expected"),
    [
        pytest.param(OPENAI_CHAT, OPENAI_STREAM, OPENAI_STREAM_USAGE, id="openai"),
        pytest.param(OPENAI_CHAT, OPENAI_STREAM.replace(b"\n", b"\r\n"), OPENAI_STREAM_USAGE),
        pytest.param(OPENAI_CHAT, OPENAI_STREAM.replace(b"\n", b"\r"), OPENAI_STREAM_USAGE),
        pytest.param(OLLAMA_GENERATE, OLLAMA_STREAM, OLLAMA_STREAM_USAGE, id="ollama"),
        pytest.param(OLLAMA_GENERATE, OLLAMA_STREAM.replace(b"\n", b"\r\n"), OLLAMA_STREAM_USAGE),
    ],
)
def test_stream_usage_split_at_every_offset(
    endpoint: Endpoint, stream: bytes, expected: Usage | None
) -> None:
    for offset in range(len(stream) + 1):
        got = read_stream(endpoint, [stream[:offset], stream[offset:]])
        assert got == expected, f"split at {offset}: {stream[:offset][-20:]!r}"


@pytest.mark.parametrize("endpoint", [OPENAI_CHAT, OLLAMA_GENERATE])
def test_stream_usage_byte_by_byte(endpoint: Endpoint) -> None:
    stream = OPENAI_STREAM if endpoint is OPENAI_CHAT else OLLAMA_STREAM
    expected = OPENAI_STREAM_USAGE if endpoint is OPENAI_CHAT else OLLAMA_STREAM_USAGE
    assert read_stream(endpoint, [bytes([byte]) for byte in stream]) == expected


def test_stream_usage_split_in_three_everywhere_around_crlf() -> None:
    stream = OPENAI_STREAM.replace(b"\n", b"\r\n")
    usage_at = stream.index(b'"usage":{')
    for first in range(usage_at - 40, len(stream)):
        for second in range(first, min(first + 4, len(stream) + 1)):
            chunks = [stream[:first], stream[first:second], stream[second:]]
            assert read_stream(OPENAI_CHAT, chunks) == OPENAI_STREAM_USAGE, (first, second)


def test_stream_usage_cr_then_lf_across_chunks_is_one_line_end() -> None:
    # "data: {...}\r" + "\ndata: ..." must not make "data: ..." part of an empty line.
    usage = b'data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}'
    assert read_stream(OPENAI_CHAT, [b"data: x\r", b"\n" + usage + b"\r", b"\n"]) == Usage(1, 2)


def test_stream_usage_lone_cr_mid_chunk_does_not_eat_a_later_lf() -> None:
    chunks = [b'{"done":true,"eval_count":3,\rxx', b'\n{"done":true,"eval_count":4}\n']
    assert read_stream(OLLAMA_GENERATE, chunks) == Usage(0, 4)


def test_stream_usage_skips_overlong_lines_and_recovers() -> None:
    long_line = b'data: {"usage":{"prompt_tokens":1,"completion_tokens":1},"pad":"'
    long_line += b"x" * 5000 + b'"}\n\n'
    tail = sse(USAGE_EVENT)
    stream = long_line + tail
    assert read_stream(OPENAI_CHAT, [long_line], max_line_bytes=1024) is None
    for size in (1, 7, 100, 1000, 4096):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert read_stream(OPENAI_CHAT, chunks, max_line_bytes=1024) == Usage(3, 2), size


def test_stream_usage_line_at_the_limit_is_read() -> None:
    line = sse(USAGE_EVENT).rstrip(b"\n")
    for limit, expected in ((len(line), Usage(3, 2)), (len(line) - 1, None)):
        for split in (0, len(line) // 2, len(line)):
            chunks = [line[:split], line[split:], b"\n\n"]
            assert read_stream(OPENAI_CHAT, chunks, max_line_bytes=limit) == expected


def test_stream_usage_keeps_only_the_current_line() -> None:
    reader = StreamUsageReader(OPENAI_CHAT, max_line_bytes=256)
    for _ in range(10_000):
        reader.feed(b"data: " + b"y" * 50)
    assert len(reader._pending) <= 256
    reader.feed(b"\n" + sse(USAGE_EVENT))
    assert reader.usage == Usage(3, 2)
    assert not reader._pending


def test_stream_usage_does_not_change_chunks() -> None:
    chunk = bytearray(OPENAI_STREAM)
    reader = StreamUsageReader(OPENAI_CHAT)
    reader.feed(bytes(chunk))
    assert chunk == OPENAI_STREAM


def test_stream_usage_property_is_repeatable() -> None:
    reader = StreamUsageReader(OLLAMA_GENERATE)
    reader.feed(OLLAMA_STREAM.rstrip(b"\n"))
    assert reader.usage == OLLAMA_STREAM_USAGE
    assert reader.usage == OLLAMA_STREAM_USAGE
    reader.feed(b"\n")
    assert reader.usage == OLLAMA_STREAM_USAGE


def test_stream_usage_reads_openai_shape_from_ollama_openai_endpoint() -> None:
    # An Ollama server answering the OpenAI API streams OpenAI events.
    assert read_stream(OPENAI_CHAT, [sse(USAGE_EVENT, "[DONE]")]) == Usage(3, 2)


def test_stream_usage_multibyte_text_split_inside_a_character() -> None:
    event = json.dumps(
        {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}, "note": "héé😀"},
        ensure_ascii=False,
    )
    stream = sse(event)
    for offset in range(len(stream) + 1):
        assert read_stream(OPENAI_CHAT, [stream[:offset], stream[offset:]]) == Usage(2, 1)


# --- ensure_stream_usage --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "document", "expected"),
    [
        pytest.param(
            OPENAI_CHAT,
            {"model": "m", "stream": True},
            {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
            id="chat-adds",
        ),
        pytest.param(
            OPENAI_COMPLETIONS,
            {"model": "m", "prompt": "p", "stream": True},
            {
                "model": "m",
                "prompt": "p",
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            id="completions-adds",
        ),
        pytest.param(
            OPENAI_CHAT,
            {"stream": True, "stream_options": {"include_obfuscation": False}},
            {
                "stream": True,
                "stream_options": {"include_obfuscation": False, "include_usage": True},
            },
            id="keeps-other-options",
        ),
        pytest.param(
            OPENAI_CHAT,
            {"stream": True, "stream_options": {"include_usage": False}},
            {"stream": True, "stream_options": {"include_usage": True}},
            id="overrides-false",
        ),
        pytest.param(
            OPENAI_CHAT,
            {"stream": True, "stream_options": None},
            {"stream": True, "stream_options": {"include_usage": True}},
            id="options-null",
        ),
    ],
)
def test_ensure_stream_usage_adds(
    endpoint: Endpoint, document: dict[str, Any], expected: dict[str, Any]
) -> None:
    before = copy.deepcopy(document)
    assert ensure_stream_usage(endpoint, document) == expected
    assert document == before


@pytest.mark.parametrize(
    ("endpoint", "document"),
    [
        pytest.param(OPENAI_CHAT, {"model": "m"}, id="not-streaming"),
        pytest.param(OPENAI_CHAT, {"stream": False}, id="stream-false"),
        pytest.param(OPENAI_CHAT, {"stream": "true"}, id="stream-string"),
        pytest.param(OPENAI_EMBEDDINGS, {"stream": True}, id="embeddings"),
        pytest.param(OLLAMA_CHAT, {"stream": True}, id="ollama-chat"),
        pytest.param(OLLAMA_GENERATE, {"stream": True}, id="ollama-generate"),
        pytest.param(
            OPENAI_CHAT,
            {"stream": True, "stream_options": {"include_usage": True}},
            id="already-set",
        ),
        pytest.param(OPENAI_CHAT, {"stream": True, "stream_options": "odd"}, id="odd-options"),
    ],
)
def test_ensure_stream_usage_leaves_unchanged(endpoint: Endpoint, document: dict[str, Any]) -> None:
    before = copy.deepcopy(document)
    assert ensure_stream_usage(endpoint, document) is document
    assert document == before
