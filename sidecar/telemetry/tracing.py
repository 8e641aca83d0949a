"""Traces: one OpenTelemetry span per request, exported over OTLP off the request path.

:meth:`Tracing.start` opens the request's span when its headers arrive, as a child of
the caller's W3C ``traceparent`` if there is one; :meth:`SpanHandle.traceparent` is the
header to send upstream so the model call continues the trace. When the stream ends,
:meth:`Tracing.finish` copies the :class:`~sidecar.telemetry.record.RequestRecord` onto
the span (attributes, events, status) and ends it.

Ending a span only appends it to the batch processor's queue; the SDK's worker thread
exports batches, bounded by the exporter's timeout. A slow, stalled or refusing
collector therefore never blocks a request: spans that find the queue full are dropped
and counted (:class:`_QueueGate`), export results are counted per batch
(:class:`_CountingExporter`); :meth:`Tracing.stats` reports both for the metrics.

Configuration is the standard ``OTEL_*`` environment variables, read from the mapping
given to :meth:`Tracing.from_environment`. The provider is private to this object; the
global OpenTelemetry tracer provider is never set. Spans never carry prompts,
completions or credentials: the record holds none.
"""

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from importlib.metadata import entry_points
from typing import Any, Final
from urllib.parse import unquote

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import (
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    format_trace_id,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.re import parse_env_headers
from opentelemetry.util.types import AttributeValue

from sidecar.domain.api import Endpoint, endpoint_for_path
from sidecar.telemetry.record import ERROR_OUTCOMES, RecordEvent, RequestRecord

_LOGGER = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME: Final = "ai-routing-sidecar"
SCOPE_NAME: Final = "ai_sidecar"
"""The instrumentation scope of the sidecar's spans."""

SHUTDOWN_BUDGET_S: Final = 2.0
"""The longest :meth:`Tracing.shutdown` takes, whatever the collector does."""
FLUSH_BUDGET_S: Final = 1.0
"""The part of the shutdown budget spent exporting the spans still queued."""

GRPC: Final = "grpc"
HTTP_PROTOBUF: Final = "http/protobuf"
_DEFAULT_GRPC_ENDPOINT: Final = "http://localhost:4317"
_DEFAULT_HTTP_ENDPOINT: Final = "http://localhost:4318"
_HTTP_TRACES_PATH: Final = "v1/traces"
_DEFAULT_EXPORT_TIMEOUT_S: Final = 10.0

_SAMPLER_ENTRY_POINTS: Final = "opentelemetry_traces_sampler"
"""Where the SDK registers its samplers by ``OTEL_TRACES_SAMPLER`` name."""
_RATIO_SAMPLERS: Final = frozenset({"traceidratio", "parentbased_traceidratio"})
_DEFAULT_SAMPLER: Final = "parentbased_always_on"

STAT_KEYS: Final = ("spans_started", "spans_exported", "spans_export_failed", "spans_dropped")
"""The counters :meth:`Tracing.stats` reports."""

_OPERATIONS: Final = {
    Endpoint.OPENAI_CHAT: "chat",
    Endpoint.OLLAMA_CHAT: "chat",
    Endpoint.OPENAI_COMPLETIONS: "text_completion",
    Endpoint.OLLAMA_GENERATE: "text_completion",
    Endpoint.OPENAI_EMBEDDINGS: "embeddings",
    Endpoint.OLLAMA_EMBED: "embeddings",
}
"""The GenAI ``gen_ai.operation.name`` of each AI endpoint; other paths have none."""

_PROPAGATOR: Final = TraceContextTextMapPropagator()


# --- Configuration ---------------------------------------------------------------------------


def _setting(environ: Mapping[str, str], *names: str) -> str | None:
    """The first of ``names`` set to something other than blanks, stripped."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def _number(environ: Mapping[str, str], names: tuple[str, ...], default: float) -> float:
    """A positive number from the first of ``names`` that is set; ``default`` otherwise."""
    raw = _setting(environ, *names)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value > 0:
        return value
    _LOGGER.warning("%s=%r is not a positive number; using %s", names[0], raw, default)
    return default


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """Whether ``OTEL_SDK_DISABLED`` and ``OTEL_TRACES_EXPORTER`` ask for OTLP tracing."""
    if (_setting(environ, "OTEL_SDK_DISABLED") or "").lower() == "true":
        return False
    names = [
        name.strip().lower()
        for name in (_setting(environ, "OTEL_TRACES_EXPORTER") or "otlp").split(",")
    ]
    unsupported = [name for name in names if name not in ("otlp", "none", "")]
    if unsupported:
        _LOGGER.warning("OTEL_TRACES_EXPORTER: unsupported exporters %s ignored", unsupported)
    return "otlp" in names


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """Where and how spans are exported: the ``OTEL_EXPORTER_OTLP_*`` variables.

    The signal-specific variable (``..._TRACES_...``) wins over the general one. For
    ``http/protobuf``, a general endpoint gets ``/v1/traces`` appended and a traces
    endpoint is used as it is. Timeouts are in seconds, as the Python exporters read them.
    Certificates and compression are left to the exporters, which read them from the
    process environment.
    """

    protocol: str
    endpoint: str
    headers: dict[str, str]
    timeout_s: float
    insecure: bool | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> "OtlpSettings":
        protocol = _protocol(environ)
        headers = _setting(
            environ, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"
        )
        timeout_names = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
        return cls(
            protocol=protocol,
            endpoint=_endpoint(environ, protocol),
            headers=dict(parse_env_headers(headers, liberal=True)) if headers else {},
            timeout_s=_number(environ, timeout_names, _DEFAULT_EXPORT_TIMEOUT_S),
            insecure=_insecure(environ),
        )

    def build_exporter(self) -> SpanExporter:
        """The SDK's OTLP span exporter for this protocol (no connection is made yet)."""
        if self.protocol == HTTP_PROTOBUF:
            return HttpSpanExporter(
                endpoint=self.endpoint, headers=self.headers, timeout=self.timeout_s
            )
        return GrpcSpanExporter(
            endpoint=self.endpoint,
            insecure=self.insecure,
            headers=self.headers,
            timeout=self.timeout_s,
        )


def _protocol(environ: Mapping[str, str]) -> str:
    names = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (_setting(environ, *names) or GRPC).lower()
    if protocol in (GRPC, HTTP_PROTOBUF):
        return protocol
    _LOGGER.warning("OTLP protocol %r is not supported (grpc, http/protobuf); using grpc", protocol)
    return GRPC


def _endpoint(environ: Mapping[str, str], protocol: str) -> str:
    traces_endpoint = _setting(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces_endpoint is not None:
        return traces_endpoint
    if protocol == GRPC:
        return _setting(environ, "OTEL_EXPORTER_OTLP_ENDPOINT") or _DEFAULT_GRPC_ENDPOINT
    base = _setting(environ, "OTEL_EXPORTER_OTLP_ENDPOINT") or _DEFAULT_HTTP_ENDPOINT
    return f"{base.removesuffix('/')}/{_HTTP_TRACES_PATH}"


def _insecure(environ: Mapping[str, str]) -> bool | None:
    raw = _setting(environ, "OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")
    return None if raw is None else raw.lower() == "true"


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """The batch span processor's ``OTEL_BSP_*`` settings (the SDK's defaults otherwise).

    The export batch is never larger than the queue (the SDK refuses that).
    """

    max_queue_size: int = 2048
    schedule_delay_ms: int = 5000
    max_export_batch_size: int = 512
    export_timeout_ms: int = 30000

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> "BatchSettings":
        defaults = cls()
        queue = int(_number(environ, ("OTEL_BSP_MAX_QUEUE_SIZE",), defaults.max_queue_size))
        batch = int(
            _number(environ, ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE",), defaults.max_export_batch_size)
        )
        return cls(
            max_queue_size=max(queue, 1),
            schedule_delay_ms=int(
                _number(environ, ("OTEL_BSP_SCHEDULE_DELAY",), defaults.schedule_delay_ms)
            ),
            max_export_batch_size=max(min(batch, queue), 1),
            export_timeout_ms=int(
                _number(environ, ("OTEL_BSP_EXPORT_TIMEOUT",), defaults.export_timeout_ms)
            ),
        )


def sampler_from_environment(environ: Mapping[str, str]) -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER`` (and ``_ARG``) names, as the SDK resolves it.

    Names are looked up where the SDK registers its samplers (``always_on``,
    ``parentbased_traceidratio``, ...; installed plugins too). An unknown name or a bad
    argument is logged and falls back to the default, ``parentbased_always_on``.
    """
    name = (_setting(environ, "OTEL_TRACES_SAMPLER") or _DEFAULT_SAMPLER).lower()
    try:
        (entry_point,) = entry_points(group=_SAMPLER_ENTRY_POINTS, name=name)
        sampler = entry_point.load()(_sampler_argument(environ, name))
    except Exception:
        _LOGGER.warning("OTEL_TRACES_SAMPLER=%r cannot be used; sampling every trace", name)
        return ParentBased(ALWAYS_ON)
    if not isinstance(sampler, Sampler):
        _LOGGER.warning("OTEL_TRACES_SAMPLER=%r is not a sampler; sampling every trace", name)
        return ParentBased(ALWAYS_ON)
    return sampler


def _sampler_argument(environ: Mapping[str, str], name: str) -> float | str | None:
    raw = _setting(environ, "OTEL_TRACES_SAMPLER_ARG")
    if name not in _RATIO_SAMPLERS:
        return raw
    try:
        return float(raw) if raw is not None else 1.0
    except ValueError:
        _LOGGER.warning("OTEL_TRACES_SAMPLER_ARG=%r is not a ratio; using 1.0", raw)
        return 1.0


def resource_from_environment(environ: Mapping[str, str], service_version: str) -> Resource:
    """The resource: the SDK's own attributes, ``OTEL_RESOURCE_ATTRIBUTES``, the service.

    ``OTEL_SERVICE_NAME`` wins over a ``service.name`` in the attributes, which wins over
    ``ai-routing-sidecar``; ``service.version`` is the sidecar's unless the attributes
    name one.
    """
    attributes: dict[str, AttributeValue] = {
        "service.name": DEFAULT_SERVICE_NAME,
        "service.version": service_version,
    }
    attributes.update(_resource_attributes(_setting(environ, "OTEL_RESOURCE_ATTRIBUTES")))
    service_name = _setting(environ, "OTEL_SERVICE_NAME")
    if service_name is not None:
        attributes["service.name"] = service_name
    return Resource.create(attributes)


def _resource_attributes(raw: str | None) -> dict[str, str]:
    """``key=value`` pairs, comma-separated, values percent-decoded (W3C Baggage style)."""
    attributes: dict[str, str] = {}
    for item in (raw or "").split(","):
        key, separator, value = item.partition("=")
        if separator and key.strip():
            attributes[key.strip()] = unquote(value.strip())
        elif item.strip():
            _LOGGER.warning("OTEL_RESOURCE_ATTRIBUTES: %r is not key=value; ignored", item)
    return attributes


# --- Counting what happens to spans ------------------------------------------------------------


class _SpanLedger:
    """Counts of spans started, exported, failed and dropped, and the queue's occupancy.

    ``pending`` is every sampled span handed to the batch processor and not yet taken
    by an export; it is never more than ``capacity``, the processor's queue size.
    Thread-safe: spans end on the event loop, exports run on the SDK's worker thread.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self._counts = dict.fromkeys(STAT_KEYS, 0)

    def add(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[key] += amount

    def admit(self) -> bool:
        """Take a place in the queue for an ended span; False (and counted) if none is left."""
        with self._lock:
            if self._closed or self._pending >= self._capacity:
                self._counts["spans_dropped"] += 1
                return False
            self._pending += 1
            return True

    def leave_queue(self, amount: int) -> None:
        """``amount`` spans were taken from the queue for export."""
        with self._lock:
            self._pending = max(self._pending - amount, 0)

    def close(self) -> None:
        """Admit nothing more: spans ending from now on are dropped."""
        with self._lock:
            self._closed = True

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class _CountingExporter(SpanExporter):
    """Delegates to the OTLP exporter and counts each batch's spans by the result."""

    def __init__(self, delegate: SpanExporter, ledger: _SpanLedger) -> None:
        self.delegate = delegate
        self._ledger = ledger
        self._shutdown_once = threading.Lock()
        self._is_shut_down = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._ledger.leave_queue(len(spans))
        try:
            result = self.delegate.export(spans)
        except Exception:
            _LOGGER.warning("span export raised", exc_info=True)
            result = SpanExportResult.FAILURE
        exported = result is SpanExportResult.SUCCESS
        self._ledger.add("spans_exported" if exported else "spans_export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        """Shut the delegate down once: an export in progress is abandoned."""
        with self._shutdown_once:
            if self._is_shut_down:
                return
            self._is_shut_down = True
        self.delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.delegate.force_flush(timeout_millis)


class _QueueGate(SpanProcessor):
    """In front of the batch processor: lets an ended span in only if the queue has room.

    The SDK's processor, when its queue is full, drops its oldest span, logs and counts
    the drop in internal metrics that are off by default. The gate keeps the count
    itself: the ledger tracks the spans queued (``admit`` here, ``leave_queue`` when an
    export takes a batch), so the processor's queue never overflows and every span
    turned away is counted once. ``on_end`` only appends to the queue: it never waits.
    """

    def __init__(self, batch: BatchSpanProcessor, ledger: _SpanLedger) -> None:
        self._batch = batch
        self._ledger = ledger

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        self._batch.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return
        if self._ledger.admit():
            self._batch.on_end(span)

    def shutdown(self) -> None:
        self._ledger.close()
        self._batch.shutdown()  # type: ignore[no-untyped-call]  # untyped in the SDK

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)


def _run_bounded(work: Callable[[], object], timeout_s: float) -> None:
    """Run ``work`` on a daemon thread; return when it is done or after ``timeout_s``."""

    def guarded() -> None:
        try:
            work()
        except Exception:
            _LOGGER.warning("tracing shutdown step failed", exc_info=True)

    thread = threading.Thread(target=guarded, name="ai-sidecar-tracing-shutdown", daemon=True)
    thread.start()
    thread.join(max(timeout_s, 0.0))


@dataclass(slots=True)
class _Pipeline:
    """The private provider, its tracer and the export path behind it."""

    provider: TracerProvider
    tracer: Tracer
    gate: _QueueGate
    exporter: _CountingExporter
    ledger: _SpanLedger
    stopped: bool = False

    @classmethod
    def build(
        cls, otlp: OtlpSettings, batch: BatchSettings, sampler: Sampler, resource: Resource
    ) -> "_Pipeline":
        ledger = _SpanLedger(batch.max_queue_size)
        exporter = _CountingExporter(otlp.build_exporter(), ledger)
        processor = BatchSpanProcessor(
            exporter,
            max_queue_size=batch.max_queue_size,
            schedule_delay_millis=batch.schedule_delay_ms,
            max_export_batch_size=batch.max_export_batch_size,
            export_timeout_millis=batch.export_timeout_ms,
        )
        gate = _QueueGate(processor, ledger)
        provider = TracerProvider(sampler=sampler, resource=resource, shutdown_on_exit=False)
        provider.add_span_processor(gate)
        version = resource.attributes.get("service.version")
        tracer = provider.get_tracer(SCOPE_NAME, str(version) if version else None)
        return cls(provider, tracer, gate, exporter, ledger)

    def shutdown(self) -> None:
        """Flush for at most :data:`FLUSH_BUDGET_S`, then stop, within :data:`SHUTDOWN_BUDGET_S`.

        Shutting the exporter down abandons an export still in progress (a stalled
        collector): the gRPC channel closes and retries stop. Only the first call acts.
        """
        if self.stopped:
            return
        self.stopped = True
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        _run_bounded(self.gate.force_flush, FLUSH_BUDGET_S)
        self.ledger.close()
        _run_bounded(self.exporter.shutdown, deadline - time.monotonic())
        _run_bounded(self.provider.shutdown, deadline - time.monotonic())


# --- Spans -----------------------------------------------------------------------------------


class SpanHandle:
    """The span of one request, between :meth:`Tracing.start` and :meth:`Tracing.finish`.

    ``trace_id_hex`` is the trace's id when the span is sampled, else empty (as when
    tracing is off).
    """

    __slots__ = ("_finished", "_headers", "_span", "_start_ns", "trace_id_hex")

    def __init__(self, span: Span | None = None, start_ns: int = 0) -> None:
        self._span = span
        self._start_ns = start_ns
        self._finished = False
        self._headers: dict[str, str] | None = None
        context = span.get_span_context() if span is not None else None
        sampled = context is not None and context.is_valid and context.trace_flags.sampled
        self.trace_id_hex = format_trace_id(context.trace_id) if sampled and context else ""

    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` naming this span as the parent; None when tracing is off."""
        return self._propagation_headers().get("traceparent")

    def tracestate(self) -> str | None:
        """The W3C ``tracestate`` to send with :meth:`traceparent`, if there is one."""
        return self._propagation_headers().get("tracestate")

    def _propagation_headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {}
            if self._span is not None:
                _PROPAGATOR.inject(self._headers, context=set_span_in_context(self._span))
        return self._headers

    def _take(self) -> Span | None:
        """The span to finish, the first time only."""
        if self._finished:
            return None
        self._finished = True
        return self._span


class Tracing:
    """The tracing sink: starts and finishes request spans, counts what is exported."""

    def __init__(self, pipeline: _Pipeline | None = None) -> None:
        self._pipeline = pipeline

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], service_version: str) -> "Tracing":
        """Tracing as the ``OTEL_*`` variables of ``environ`` configure it.

        Off (a no-op) with ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``;
        also off, with an error logged, if the configuration cannot be built, so that
        tracing can never stop the sidecar from routing.
        """
        if not tracing_wanted(environ):
            return cls.disabled()
        try:
            pipeline = _Pipeline.build(
                OtlpSettings.from_environment(environ),
                BatchSettings.from_environment(environ),
                sampler_from_environment(environ),
                resource_from_environment(environ, service_version),
            )
        except Exception:
            _LOGGER.error("tracing is off: its configuration cannot be used", exc_info=True)
            return cls.disabled()
        return cls(pipeline)

    @classmethod
    def disabled(cls) -> "Tracing":
        """Tracing that does nothing."""
        return cls(None)

    @property
    def exporter(self) -> SpanExporter | None:
        """The OTLP exporter spans go to; None when tracing is off."""
        return self._pipeline.exporter.delegate if self._pipeline is not None else None

    def start(
        self, request_headers: Mapping[str, str], path: str, now_ns: int | None = None
    ) -> SpanHandle:
        """Open the request's span, continuing the caller's trace if its headers carry one.

        ``request_headers`` have lower-case names; ``now_ns`` is the start time in
        nanoseconds since the epoch (now, if None). Never raises.
        """
        pipeline = self._pipeline
        if pipeline is None:
            return SpanHandle()
        start_ns = time.time_ns() if now_ns is None else now_ns
        try:
            parent = _PROPAGATOR.extract(request_headers, context=Context())
            url_path = _path_only(path)
            span = pipeline.tracer.start_span(
                f"ai.route {url_path}",
                context=parent,
                kind=SpanKind.CLIENT,
                start_time=start_ns,
                attributes={"url.path": url_path},
            )
        except Exception:
            _LOGGER.warning("cannot start the request's span", exc_info=True)
            return SpanHandle()
        if span.get_span_context().trace_flags.sampled:
            pipeline.ledger.add("spans_started")
        return SpanHandle(span, start_ns)

    def finish(self, span: SpanHandle, record: RequestRecord, end_ns: int | None = None) -> None:
        """Copy ``record`` onto the span and end it (once). Never raises.

        ``end_ns`` defaults to the span's start plus the record's duration, or now.
        """
        otel_span = span._take()
        if otel_span is None:
            return
        start_ns = span._start_ns
        try:
            if otel_span.is_recording():
                _annotate(otel_span, record, start_ns)
        except Exception:
            _LOGGER.warning("cannot describe the request's span", exc_info=True)
        try:
            otel_span.end(end_time=_end_time(record, start_ns) if end_ns is None else end_ns)
        except Exception:
            _LOGGER.warning("cannot end the request's span", exc_info=True)

    def stats(self) -> dict[str, int]:
        """Spans started (sampled), exported, failed to export, and dropped; all 0 when off."""
        if self._pipeline is None:
            return dict.fromkeys(STAT_KEYS, 0)
        return self._pipeline.ledger.snapshot()

    def shutdown(self) -> None:
        """Export what is queued if the collector answers in time; at most 2 s in all."""
        if self._pipeline is not None:
            self._pipeline.shutdown()


# --- From the record to the span ---------------------------------------------------------------


def _path_only(path: str) -> str:
    """The path without its query string (which may hold anything the client sent)."""
    return path.partition("?")[0]


def operation_name(path: str) -> str | None:
    """The GenAI operation a request path is (``chat``, ...); None for other paths."""
    endpoint = endpoint_for_path(path)
    return _OPERATIONS.get(endpoint) if endpoint is not None else None


def error_type(record: RequestRecord) -> str | None:
    """Why the request counts as failed (its error code, else its status); None if it did not."""
    failed = record.outcome in ERROR_OUTCOMES or (record.status or 0) >= 500
    if not failed:
        return None
    if record.error_code:
        return record.error_code
    return str(record.status) if record.status is not None else record.outcome


def span_attributes(record: RequestRecord) -> dict[str, AttributeValue]:
    """The span attributes of a finished request; fields the record lacks are left out."""
    attributes: dict[str, AttributeValue | None] = {
        "ai_sidecar.tenant": record.tenant,
        "ai_sidecar.tier": record.tier,
        "ai_sidecar.team": record.team,
        "ai_sidecar.virtual_model": record.model,
        "ai_sidecar.cluster": record.cluster,
        "ai_sidecar.decision_reason": record.reason,
        "ai_sidecar.rung": record.rung,
        "ai_sidecar.variant": record.variant,
        "ai_sidecar.task": record.task,
        "ai_sidecar.objective_met": record.objective_met,
        "ai_sidecar.fallback_depth": record.fallback_depth,
        "ai_sidecar.skipped": [f"{cluster}: {why}" for cluster, why in record.skipped] or None,
        "ai_sidecar.pool": record.pool,
        "ai_sidecar.pool_in_use": record.pool_in_use,
        "ai_sidecar.pool_capacity": record.pool_capacity,
        "ai_sidecar.priority": record.priority,
        "ai_sidecar.breaker_state": record.breaker_state,
        "ai_sidecar.outcome": record.outcome,
        "ai_sidecar.error_code": record.error_code,
        "ai_sidecar.cost_usd": record.cost_usd,
        "ai_sidecar.cost_cache": record.cost_cache,
        "ai_sidecar.saved_usd": record.saved_usd,
        "ai_sidecar.stream": record.stream,
        "url.path": _path_only(record.path),
        "http.response.status_code": record.status,
        "error.type": error_type(record),
    }
    attributes.update(_genai_attributes(record))
    return {key: value for key, value in attributes.items() if value is not None}


def _genai_attributes(record: RequestRecord) -> dict[str, AttributeValue | None]:
    """GenAI semantic-convention attributes, for AI endpoints only."""
    operation = operation_name(record.path)
    if operation is None:
        return {}
    return {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": record.provider_name,
        "gen_ai.request.model": record.upstream_model,
        "gen_ai.response.model": record.response_model,
        "gen_ai.usage.input_tokens": record.input_tokens,
        "gen_ai.usage.output_tokens": record.output_tokens,
    }


def span_name(record: RequestRecord) -> str | None:
    """``{operation} {upstream model}`` (``chat gpt-4o``) when both are known."""
    operation = operation_name(record.path)
    if operation is None or not record.upstream_model:
        return None
    return f"{operation} {record.upstream_model}"


def _annotate(span: Span, record: RequestRecord, start_ns: int) -> None:
    name = span_name(record)
    if name is not None:
        span.update_name(name)
    span.set_attributes(span_attributes(record))
    for event in record.events:
        span.add_event(
            event.name,
            event_attributes(event),
            timestamp=_at_ns(event.at_s, record, start_ns),
        )
    failure = error_type(record)
    if failure is not None:
        span.set_status(Status(StatusCode.ERROR, failure))


def _at_ns(at_s: float, record: RequestRecord, start_ns: int) -> int:
    """A monotonic time of the record as epoch nanoseconds on the span's clock."""
    return start_ns + max(round((at_s - record.started_at_s) * 1e9), 0)


def _end_time(record: RequestRecord, start_ns: int) -> int:
    if record.ended_at_s is None:
        return time.time_ns()
    return _at_ns(record.ended_at_s, record, start_ns)


def event_attributes(event: RecordEvent) -> dict[str, AttributeValue]:
    """An event's attributes as OpenTelemetry values: enums by value, others as text."""
    converted = {key: _attribute_value(value) for key, value in event.attributes.items()}
    return {key: value for key, value in converted.items() if value is not None}


def _attribute_value(value: Any) -> AttributeValue | None:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Enum):
        return _attribute_value(value.value)
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    return str(value)
