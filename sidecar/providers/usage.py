"""Token usage reported by upstream answers, for cost accounting and metrics.

Pure functions and one incremental reader, no I/O:

- :func:`usage_from_json` reads the counts of a whole (buffered) answer;
- :class:`StreamUsageReader` watches a streamed answer chunk by chunk (OpenAI
  server-sent events or Ollama NDJSON) and keeps the counts of its last usage report;
- :func:`ensure_stream_usage` asks an OpenAI upstream to report usage in streams.

Where the counts are:

- OpenAI chat, completions and embeddings: ``usage`` with ``prompt_tokens``,
  ``completion_tokens`` and ``total_tokens`` (embeddings have no completion tokens).
  A stream carries it in one last chunk, with ``"choices": []``, only when the request
  set ``stream_options.include_usage``.
- Ollama ``/api/chat`` and ``/api/generate``: ``prompt_eval_count`` and ``eval_count``
  on the final object (``done: true``), the last line of a stream. Ollama leaves out
  ``prompt_eval_count`` when the whole prompt came from its cache; that reads as 0.
- Ollama ``/api/embed``: ``prompt_eval_count``.

Odd answers (missing, null, negative or non-integer counts, other shapes) read as no
usage (None), never as an error.
"""

import json
import re
from dataclasses import dataclass
from typing import Any

from sidecar.domain.api import ApiFamily, Endpoint

MAX_LINE_BYTES = 1 << 20
"""The longest stream line :class:`StreamUsageReader` reads; longer lines are skipped."""

_OPENAI_STREAMING = (Endpoint.OPENAI_CHAT, Endpoint.OPENAI_COMPLETIONS)
_EMBEDDINGS = (Endpoint.OPENAI_EMBEDDINGS, Endpoint.OLLAMA_EMBED)
_LINE_END = re.compile(rb"\r\n?|\n")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens an upstream read (input, the prompt) and wrote (output) for one request."""

    input_tokens: int
    output_tokens: int

    @property
    def total(self) -> int:
        """Input and output tokens together."""
        return self.input_tokens + self.output_tokens


# --- Whole answers --------------------------------------------------------------------------


def usage_from_json(endpoint: Endpoint, answer: object) -> Usage | None:
    """The token usage an answer from ``endpoint``'s API reports, or None if it has none.

    ``endpoint`` is the API the upstream answered in (after any translation, the
    upstream's, not the application's). ``answer`` is the parsed JSON of a whole answer,
    or of one streamed chunk or line; an Ollama line with ``done: false`` has no usage.
    """
    if not isinstance(answer, dict):
        return None
    if endpoint.family is ApiFamily.OPENAI:
        return _openai_usage(endpoint, answer.get("usage"))
    return _ollama_usage(endpoint, answer)


def _openai_usage(endpoint: Endpoint, usage: object) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    total = _count(usage.get("total_tokens"))
    if endpoint in _EMBEDDINGS:
        tokens = total if prompt is None else prompt
        return None if tokens is None else Usage(tokens, 0)
    return _from_counts(prompt, completion, total)


def _from_counts(prompt: int | None, completion: int | None, total: int | None) -> Usage | None:
    """Usage from any two of the three counts (the third is implied)."""
    if prompt is not None and completion is not None:
        return Usage(prompt, completion)
    if prompt is not None and total is not None and total >= prompt:
        return Usage(prompt, total - prompt)
    if completion is not None and total is not None and total >= completion:
        return Usage(total - completion, completion)
    return None


def _ollama_usage(endpoint: Endpoint, answer: dict[str, Any]) -> Usage | None:
    prompt = _count(answer.get("prompt_eval_count"))
    if endpoint is Endpoint.OLLAMA_EMBED:
        return None if prompt is None else Usage(prompt, 0)
    if answer.get("done") is False:
        return None
    output = _count(answer.get("eval_count"))
    if output is None:
        return None
    return Usage(0 if prompt is None else prompt, output)


def _count(value: object) -> int | None:
    """``value`` if it is a token count (a non-negative JSON integer), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


# --- Streamed answers -----------------------------------------------------------------------


class StreamUsageReader:
    """Watches a streamed answer for its token usage, one body chunk at a time.

    :meth:`feed` takes the chunks as they pass, split anywhere (inside a line, a
    ``CRLF`` or a UTF-8 sequence); the reader only observes, the bytes are not
    changed. OpenAI streams are server-sent events: each ``data:`` line is read as one
    JSON chunk, comments and ``[DONE]`` are skipped. Ollama streams are NDJSON: the
    ``done: true`` line carries the counts. The last usage seen wins. Lines are read
    as :func:`usage_from_json` reads a whole answer.

    Memory is bounded: the reader keeps only the current unfinished line, and skips a
    line longer than ``max_line_bytes`` (no usage line comes close). Only lines that
    could carry usage (naming ``usage`` or ``eval_count``) are parsed.
    """

    def __init__(self, endpoint: Endpoint, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._endpoint = endpoint
        self._max_line = max_line_bytes
        self._marker = b"usage" if endpoint.family is ApiFamily.OPENAI else b"eval_count"
        self._pending = bytearray()
        self._skipping = False  # the current line is too long; drop it up to its end
        self._after_cr = False  # the last chunk ended in CR; a leading LF belongs to it
        self._first_line = True
        self._usage: Usage | None = None

    @property
    def usage(self) -> Usage | None:
        """The last usage the stream reported so far, or None.

        A final line not yet ended by a newline counts too, so this is right at the end
        of a stream whose last line has no line break.
        """
        if self._skipping or self._marker not in self._pending:
            return self._usage
        return self._line_usage(self._strip_bom(bytes(self._pending))) or self._usage

    def feed(self, chunk: bytes) -> None:
        """Observe the next chunk of the stream."""
        if not chunk:
            return
        start = 1 if self._after_cr and chunk.startswith(b"\n") else 0
        for end in _LINE_END.finditer(chunk, start):
            self._end_line(chunk[start : end.start()])
            start = end.end()
        self._after_cr = chunk.endswith(b"\r")
        self._extend(chunk[start:])

    def _extend(self, piece: bytes) -> None:
        """Add the start of an unfinished line, or skip it once it is too long."""
        if self._skipping or not piece:
            return
        if len(self._pending) + len(piece) > self._max_line:
            self._pending.clear()
            self._skipping = True
            return
        self._pending += piece

    def _end_line(self, tail: bytes) -> None:
        """A line ends with ``tail``: read it, unless it was too long."""
        if self._skipping:
            self._skipping = False
        elif len(self._pending) + len(tail) <= self._max_line:
            line = bytes(self._pending) + tail if self._pending else tail
            self._usage = self._line_usage(self._strip_bom(line)) or self._usage
        self._pending.clear()
        self._first_line = False

    def _strip_bom(self, line: bytes) -> bytes:
        """``line`` without the byte-order mark a stream may start with."""
        return line.removeprefix(_BOM) if self._first_line else line

    def _line_usage(self, line: bytes) -> Usage | None:
        if self._marker not in line:
            return None
        if self._endpoint.family is ApiFamily.OPENAI:
            return self._event_usage(line)
        return usage_from_json(self._endpoint, _parse(line))

    def _event_usage(self, line: bytes) -> Usage | None:
        name, _, value = line.partition(b":")
        if name != b"data":
            return None  # a comment (":..."), or another field such as "event"
        return usage_from_json(self._endpoint, _parse(value.removeprefix(b" ")))


def _parse(text: bytes) -> object:
    """The JSON value in ``text``, or None when it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


# --- Requests -------------------------------------------------------------------------------


def ensure_stream_usage(endpoint: Endpoint, document: dict[str, Any]) -> dict[str, Any]:
    """The request ``document``, asking an OpenAI upstream to report usage when streaming.

    For an OpenAI chat or completions request with ``stream: true``, this returns a
    copy with ``stream_options.include_usage`` set to true (other stream options kept,
    and an explicit ``false`` overridden: the sidecar needs the counts). Any other
    request, or one whose ``stream_options`` is not an object, is returned unchanged
    (the very object). ``document`` itself is never modified.

    The client then receives one extra chunk before ``[DONE]``: the usage, with
    ``"choices": []``. OpenAI clients ignore chunks with empty choices; a client that
    reads ``choices[0]`` of every chunk without checking would not.
    """
    if endpoint not in _OPENAI_STREAMING or document.get("stream") is not True:
        return document
    options = document.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict) or options.get("include_usage") is True:
        return document
    return {**document, "stream_options": {**options, "include_usage": True}}
