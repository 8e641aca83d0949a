"""The ext_proc gRPC service: the stream loop around the per-stream processors.

Envoy calls the service from two filters, and says which in the gRPC initial metadata
``x-ext-proc-role``: ``downstream`` (the HTTP filter; one stream per client request,
answered by :class:`StreamProcessor`) or ``upstream`` (the upstream filter of a
failover aggregate cluster; one stream per attempt, answered by
:class:`UpstreamProcessor`). Without the header a stream is a downstream one.

The loop reads Envoy's messages, answers each through a fresh processor bound to the
runtime (policy and live state) active when the stream opened, and, whatever ends the
stream (Envoy closing it, a reset, cancellation or an error), closes the processor,
which gives back its pool slot and breaker permits, and leaves the stream registry as
it found it.
"""

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from sidecar.domain.api import ApiFamily
from sidecar.domain.outcome import Rejection
from sidecar.engine.runtime import RoutingRuntime
from sidecar.extproc import codec
from sidecar.extproc.processor import StreamProcessor
from sidecar.extproc.upstream import UpstreamProcessor
from sidecar.telemetry.sinks import Telemetry

log = logging.getLogger("sidecar.extproc")

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"
ROLE_METADATA = "x-ext-proc-role"
UPSTREAM_ROLE = "upstream"


class _Processor(Protocol):
    async def handle(self, message: Any) -> Any: ...

    def failed(self, code: str) -> None: ...

    def close(self) -> None: ...


class StreamRegistry:
    """Counts ext_proc streams: how many are open now, and how many have ended."""

    def __init__(self) -> None:
        self.active = 0
        self.finished = 0
        self.failed = 0

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count one stream as open for the duration of the ``with`` block."""
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self.finished += 1

    def snapshot(self) -> dict[str, int]:
        """The counters as plain data, for the admin state view."""
        return {"active": self.active, "finished": self.finished, "failed": self.failed}


class ExternalProcessorService(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Envoy's ``ExternalProcessor`` service, one processor per stream.

    ``streams`` counts client requests (downstream streams); ``attempts`` counts
    upstream attempts of failover chains.
    """

    def __init__(
        self,
        current_runtime: Callable[[], RoutingRuntime],
        streams: StreamRegistry,
        attempts: StreamRegistry | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._current_runtime = current_runtime
        self._streams = streams
        self._attempts = attempts if attempts is not None else StreamRegistry()
        self._telemetry = telemetry or Telemetry.disabled()

    async def Process(  # noqa: N802 - the gRPC method name
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        """Answer every message of one stream, in order."""
        processor: _Processor
        if _role(context) == UPSTREAM_ROLE:
            processor, registry = UpstreamProcessor(self._current_runtime()), self._attempts
        else:
            processor = StreamProcessor(self._current_runtime(), self._telemetry)
            registry = self._streams
        with registry.track():
            try:
                async for request in request_iterator:
                    yield await self._answer(processor, registry, request)
            finally:
                processor.close()

    async def _answer(self, processor: _Processor, registry: StreamRegistry, request: Any) -> Any:
        try:
            return await processor.handle(request)
        except Exception:
            registry.failed += 1
            log.exception("routing failed; answering 500")
            processor.failed("sidecar_internal_error")
            return codec.reject(_internal_error(), ApiFamily.OPENAI)


def _role(context: Any) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == ROLE_METADATA:
            return str(value)
    return "downstream"


def _internal_error() -> Rejection:
    return Rejection(
        500,
        "server_error",
        "sidecar_internal_error",
        "The routing sidecar failed to process this request.",
    )
