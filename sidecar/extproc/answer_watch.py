"""What the processor does with an answer's body on its way to the client.

Three jobs, any of which may apply to one answer: translate it (an OpenAI-style
cluster answered an Ollama client), read the token usage it reports (JSON, or the final
usage chunk of a stream), and keep it for the answer cache. Answers pass through chunk
by chunk and are never held back, except a JSON answer being translated (small, and it
must be whole to be rewritten). A copy of a JSON answer is kept, up to a bound, to read
its usage at the end.
"""

import json
from dataclasses import dataclass, field

from sidecar.domain.api import Endpoint
from sidecar.providers.response_rewrite import ResponseRewrite
from sidecar.providers.usage import StreamUsageReader, Usage, usage_from_json

MAX_COPY_BYTES = 4 * 1024 * 1024
"""The largest JSON answer whose usage is read (and which the answer cache can keep)."""


@dataclass
class AnswerWatch:
    """The watch over one answer body.

    ``upstream_endpoint`` is the API the upstream answered in (the OpenAI chat API when
    the answer is translated); usage is read in that API's shape.
    """

    upstream_endpoint: Endpoint
    streaming: bool
    rewrite: ResponseRewrite | None = None
    usage: Usage | None = None
    response_model: str | None = None
    whole_body: bytes | None = None
    _reader: StreamUsageReader | None = field(default=None, repr=False)
    _copy: bytearray = field(default_factory=bytearray, repr=False)
    _copy_overflowed: bool = False

    @property
    def body_mode(self) -> str:
        """``buffered`` only to rewrite a whole answer; ``streamed`` otherwise."""
        return self.rewrite.mode if self.rewrite is not None else "streamed"

    def chunk(self, data: bytes, end_of_stream: bool) -> bytes | None:
        """Watch one chunk; return what replaces it for the client (None: unchanged)."""
        if self.rewrite is not None and self.rewrite.mode == "buffered":
            return self._whole(data) if end_of_stream else None
        if self.streaming:
            return self._event_chunk(data, end_of_stream)
        self._keep_copy(data)
        if end_of_stream and not self._copy_overflowed:
            self._whole(bytes(self._copy))
        return None

    def _event_chunk(self, data: bytes, end_of_stream: bool) -> bytes | None:
        if self._reader is None:
            self._reader = StreamUsageReader(self.upstream_endpoint)
        self._reader.feed(data)
        if end_of_stream:
            self.usage = self._reader.usage
        if self.rewrite is not None:
            return self.rewrite.chunk(data, end_of_stream)
        return None

    def _keep_copy(self, data: bytes) -> None:
        if self._copy_overflowed:
            return
        if len(self._copy) + len(data) > MAX_COPY_BYTES:
            self._copy_overflowed = True
            self._copy.clear()
            return
        self._copy += data

    def _whole(self, data: bytes) -> bytes | None:
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            document = None
        if isinstance(document, dict):
            self.usage = usage_from_json(self.upstream_endpoint, document)
            model = document.get("model")
            self.response_model = model if isinstance(model, str) else None
        if self.rewrite is None:
            self.whole_body = data
            return None
        self.whole_body = self.rewrite.whole(data)
        return self.whole_body
