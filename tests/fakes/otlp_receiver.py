"""A real OTLP/gRPC trace receiver for tests: it collects the spans exported to it.

:class:`OtlpReceiver` runs the OpenTelemetry ``TraceService`` on a ``grpc.aio`` server
in the test's event loop and flattens every exported span into a
:class:`CollectedSpan` (hex ids, plain-Python attributes, events, status and the
resource's attributes), so tests assert on what a real collector would receive.

It can also misbehave, to test how an exporter copes:

- ``refuse = True`` answers every export with ``UNAVAILABLE`` (optionally with a
  ``RetryInfo`` delay, ``retry_delay_s``, which OTel exporters honour);
- :meth:`OtlpReceiver.stall` holds every export call until :meth:`OtlpReceiver.release`
  (or until the client gives up); :attr:`OtlpReceiver.stalled` counts the held calls.

Exporters in the OpenTelemetry SDK block their thread while exporting; run them off
the event loop (``asyncio.to_thread``) or the receiver, on that loop, cannot answer.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeAlias

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

AttributeValue: TypeAlias = (
    "str | bool | int | float | bytes | list[AttributeValue] | dict[str, AttributeValue] | None"
)
"""An attribute value as plain Python: OTLP's ``AnyValue`` decoded (None when empty)."""

Attributes: TypeAlias = dict[str, AttributeValue]

SpanPredicate = Callable[[list["CollectedSpan"]], bool]
"""A condition on all the spans collected so far."""

_RETRY_INFO_KEY = "google.rpc.retryinfo-bin"


@dataclass(frozen=True, slots=True)
class SpanEvent:
    """An event recorded on a span."""

    name: str
    attributes: Attributes
    time_unix_nano: int


@dataclass(frozen=True, slots=True)
class CollectedSpan:
    """One exported span, flattened.

    Ids are lowercase hex (``parent_span_id`` is empty for a root span); ``kind`` and
    ``status_code`` are OTLP enum names without their prefix (``"SERVER"``,
    ``"ERROR"``); ``resource`` holds the resource attributes, ``service.name``
    included; ``scope`` names the instrumentation scope.
    """

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: Attributes
    events: tuple[SpanEvent, ...]
    status_code: str
    status_message: str
    resource: Attributes
    scope: str
    start_time_unix_nano: int
    end_time_unix_nano: int

    @property
    def service_name(self) -> str | None:
        """The ``service.name`` resource attribute, if it is a string."""
        name = self.resource.get("service.name")
        return name if isinstance(name, str) else None

    def event(self, name: str) -> SpanEvent:
        """The first event called ``name``; KeyError if there is none."""
        for event in self.events:
            if event.name == name:
                return event
        raise KeyError(f"span {self.name!r} has no event {name!r}")


class OtlpReceiver:
    """An OTLP/gRPC trace collector for tests, with switches to make it misbehave."""

    def __init__(self) -> None:
        self.refuse = False
        """Answer every export with UNAVAILABLE (the spans are not collected)."""
        self.retry_delay_s: float | None = None
        """When refusing, tell the client to retry after this long (gRPC RetryInfo)."""
        self._spans: list[CollectedSpan] = []
        self._changed = asyncio.Condition()
        self._released = asyncio.Event()
        self._released.set()
        self._stalled = 0
        self._export_calls = 0
        self._server: Any = None
        self._address = ""

    @property
    def address(self) -> str:
        """The ``host:port`` the receiver listens on (empty before :meth:`start`)."""
        return self._address

    @property
    def spans(self) -> list[CollectedSpan]:
        """Every span collected so far, in arrival order (a copy)."""
        return list(self._spans)

    @property
    def export_calls(self) -> int:
        """How many export calls arrived, refused and stalled ones included."""
        return self._export_calls

    @property
    def stalled(self) -> int:
        """How many export calls are being held right now."""
        return self._stalled

    async def start(self, address: str = "127.0.0.1:0") -> str:
        """Listen on ``address`` (port 0 picks a free one); return the bound ``host:port``."""
        if self._server is not None:
            raise RuntimeError("the receiver is already started")
        server = grpc.aio.server()
        add_TraceServiceServicer_to_server(_TraceService(self._export), server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        self._address = f"{address.rpartition(':')[0]}:{port}"
        return self._address

    async def stop(self) -> None:
        """Release held calls and stop at once, cancelling calls still open."""
        self._released.set()
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    def stall(self) -> None:
        """Hold every export call, from now on, until :meth:`release`."""
        self._released.clear()

    def release(self) -> None:
        """Let held export calls (and later ones) complete."""
        self._released.set()

    def clear(self) -> None:
        """Forget the spans collected so far."""
        self._spans.clear()

    async def wait_for_spans(
        self, predicate: SpanPredicate, timeout_s: float = 10.0
    ) -> list[CollectedSpan]:
        """Wait until ``predicate(spans)`` holds; return the spans then.

        Raises TimeoutError (naming the spans collected) after ``timeout_s``.
        """
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: predicate(self.spans))
        except TimeoutError:
            names = [span.name for span in self._spans]
            raise TimeoutError(f"spans not as expected after {timeout_s}s; got {names}") from None
        return self.spans

    async def wait_for_span(self, name: str, timeout_s: float = 10.0) -> CollectedSpan:
        """Wait for the first span called ``name`` and return it."""
        spans = await self.wait_for_spans(
            lambda spans: any(span.name == name for span in spans), timeout_s
        )
        return next(span for span in spans if span.name == name)

    async def _export(self, request: ExportTraceServiceRequest, context: Any) -> None:
        self._export_calls += 1
        if self.refuse:
            await self._abort_unavailable(context)
        await self._hold_while_stalled()
        async with self._changed:
            self._spans.extend(flatten(request.resource_spans))
            self._changed.notify_all()

    async def _abort_unavailable(self, context: Any) -> None:
        if self.retry_delay_s is not None:
            delay = Duration()
            delay.FromTimedelta(timedelta(seconds=self.retry_delay_s))
            info = RetryInfo(retry_delay=delay).SerializeToString()
            context.set_trailing_metadata(((_RETRY_INFO_KEY, info),))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the test receiver refuses exports")

    async def _hold_while_stalled(self) -> None:
        if self._released.is_set():
            return
        self._stalled += 1
        try:
            await self._released.wait()
        finally:
            self._stalled -= 1


class _TraceService(TraceServiceServicer):
    """The gRPC service, handing each export request to ``export``."""

    def __init__(self, export: Callable[[ExportTraceServiceRequest, Any], Awaitable[None]]):
        self._export = export

    async def Export(  # noqa: N802 - the gRPC method's name
        self, request: ExportTraceServiceRequest, context: Any
    ) -> ExportTraceServiceResponse:
        await self._export(request, context)
        return ExportTraceServiceResponse()


# --- Flattening OTLP messages ---------------------------------------------------------------


def flatten(resource_spans: Iterable[ResourceSpans]) -> list[CollectedSpan]:
    """The spans of an export request, each with its resource and scope."""
    collected: list[CollectedSpan] = []
    for group in resource_spans:
        resource = decode_attributes(group.resource.attributes)
        for scope_spans in group.scope_spans:
            scope = scope_spans.scope.name
            collected.extend(_collect(span, resource, scope) for span in scope_spans.spans)
    return collected


def _collect(span: Span, resource: Attributes, scope: str) -> CollectedSpan:
    return CollectedSpan(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        name=span.name,
        kind=_enum_name(Span.SpanKind.Name, span.kind, "SPAN_KIND_"),
        attributes=decode_attributes(span.attributes),
        events=tuple(_event(event) for event in span.events),
        status_code=_enum_name(Status.StatusCode.Name, span.status.code, "STATUS_CODE_"),
        status_message=span.status.message,
        resource=resource,
        scope=scope,
        start_time_unix_nano=span.start_time_unix_nano,
        end_time_unix_nano=span.end_time_unix_nano,
    )


def _event(event: Span.Event) -> SpanEvent:
    return SpanEvent(event.name, decode_attributes(event.attributes), event.time_unix_nano)


def _enum_name(name_of: Callable[[Any], str], value: int, prefix: str) -> str:
    try:
        return name_of(value).removeprefix(prefix)
    except ValueError:
        return str(value)


def decode_attributes(attributes: Iterable[KeyValue]) -> Attributes:
    """OTLP key-values as a plain dict (a later duplicate key wins)."""
    return {attribute.key: decode_value(attribute.value) for attribute in attributes}


_SCALARS: dict[str, Callable[[AnyValue], AttributeValue]] = {
    "string_value": lambda value: value.string_value,
    "bool_value": lambda value: value.bool_value,
    "int_value": lambda value: value.int_value,
    "double_value": lambda value: value.double_value,
    "bytes_value": lambda value: value.bytes_value,
}


def decode_value(value: AnyValue) -> AttributeValue:
    """An OTLP ``AnyValue`` as plain Python; None when it holds nothing."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [decode_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    scalar = _SCALARS.get(kind) if kind is not None else None
    return scalar(value) if scalar is not None else None
