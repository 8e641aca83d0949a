"""The tracing sink with the real OpenTelemetry SDK, exporting to a real OTLP receiver."""

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from sidecar.core.breaker import BreakerState
from sidecar.telemetry.record import RequestRecord
from sidecar.telemetry.tracing import (
    BatchSettings,
    OtlpSettings,
    SpanHandle,
    Tracing,
    resource_from_environment,
    sampler_from_environment,
    span_attributes,
)
from tests.fakes.otlp_receiver import OtlpReceiver
from tests.waiting import wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
START_NS = 1_700_000_000_000_000_000
CHAT = "/v1/chat/completions"

TracingFactory = Callable[..., Tracing]


@pytest.fixture(autouse=True)
def _no_stray_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK merges the process's OTEL_RESOURCE_ATTRIBUTES; keep tests independent of it."""
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)


@pytest.fixture
async def make_tracing(receiver: OtlpReceiver) -> AsyncIterator[TracingFactory]:
    """Tracing exporting to the receiver (quickly: 20 ms batches); shut down at the end."""
    made: list[Tracing] = []

    def make(**overrides: str) -> Tracing:
        environ = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{receiver.address}",
            "OTEL_BSP_SCHEDULE_DELAY": "20",
            **overrides,
        }
        tracing = Tracing.from_environment(environ, "1.2.3")
        made.append(tracing)
        return tracing

    yield make
    for tracing in made:
        await asyncio.to_thread(tracing.shutdown)


def traceparent(flags: str = "01") -> str:
    return f"00-{TRACE_ID}-{PARENT_SPAN_ID}-{flags}"


def is_sampled(flags: str) -> bool:
    return bool(int(flags, 16) & 0x01)


def routed_record(**fields: object) -> RequestRecord:
    record = RequestRecord(started_at_s=100.0, path=CHAT, api_family="openai")
    record.outcome = "routed"
    record.status = 200
    record.ended_at_s = 101.5
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def full_record() -> RequestRecord:
    record = routed_record(
        provider_name="openai",
        tenant="acme",
        tier="paid",
        model="chat",
        cluster="openai-cheap",
        upstream_model="gpt-4o-mini",
        response_model="gpt-4o-mini-2024-07-18",
        rung="fallback",
        fallback_depth=1,
        reason="primary breaker open",
        skipped=[("openai-premium", "breaker open")],
        pool="paid-pool",
        pool_in_use=3,
        pool_capacity=10,
        priority=50,
        breaker_state="closed",
        stream=True,
        first_byte_at_s=100.2,
        input_tokens=12,
        output_tokens=34,
        cost_usd=0.0005,
    )
    record.event("fallback", 100.01, from_cluster="openai-premium", reason="breaker open")
    record.event(
        "breaker_transition",
        100.25,
        cluster="openai-premium",
        **{"from": BreakerState.CLOSED, "to": BreakerState.OPEN},
        reason="failure rate 80% >= 50%",
    )
    return record


# --- Parents and propagation ----------------------------------------------------------------


async def test_a_parent_traceparent_is_honoured(
    receiver: OtlpReceiver, make_tracing: TracingFactory
) -> None:
    tracing = make_tracing()
    headers = {"traceparent": traceparent(), "tracestate": "vendor=abc"}

    handle = tracing.start(headers, CHAT)
    tracing.finish(handle, full_record())

    span = await receiver.wait_for_span("chat gpt-4o-mini")
    assert span.trace_id == TRACE_ID == handle.trace_id_hex
    assert span.parent_span_id == PARENT_SPAN_ID
    assert span.kind == "CLIENT"
    assert handle.traceparent() == f"00-{TRACE_ID}-{span.span_id}-01"
    assert handle.tracestate() == "vendor=abc"


async def test_without_a_traceparent_a_new_trace_starts(
    receiver: OtlpReceiver, make_tracing: TracingFactory
) -> None:
    tracing = make_tracing()

    handle = tracing.start({}, CHAT)
    tracing.finish(handle, full_record())

    span = await receiver.wait_for_span("chat gpt-4o-mini")
    assert span.parent_span_id == ""
    assert span.trace_id == handle.trace_id_hex
    assert len(handle.trace_id_hex) == 32
    injected = (handle.traceparent() or "").split("-")
    assert injected[:3] == ["00", span.trace_id, span.span_id]
    assert is_sampled(injected[3])  # (a new trace may also set the W3C "random" flag, 02)
    assert handle.tracestate() is None


async def test_an_unsampled_parent_keeps_the_flag_and_exports_nothing(
    receiver: OtlpReceiver, make_tracing: TracingFactory
) -> None:
    tracing = make_tracing()

    handle = tracing.start({"traceparent": traceparent(flags="00")}, CHAT)
    tracing.finish(handle, full_record())
    await asyncio.to_thread(tracing.shutdown)

    injected = handle.traceparent()
    assert injected is not None
    version, trace_id, span_id, flags = injected.split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "00")
    assert span_id != PARENT_SPAN_ID
    assert handle.trace_id_hex == ""
    assert receiver.spans == []
    assert tracing.stats()["spans_started"] == 0


async def test_the_sampler_comes_from_the_environment(make_tracing: TracingFactory) -> None:
    tracing = make_tracing(OTEL_TRACES_SAMPLER="always_off")

    handle = tracing.start({"traceparent": traceparent()}, CHAT)
    tracing.finish(handle, full_record())

    assert handle.trace_id_hex == ""
    assert not is_sampled((handle.traceparent() or "").split("-")[3])


# --- What a span carries ----------------------------------------------------------------------


async def test_attributes_events_and_resource_arrive(
    receiver: OtlpReceiver, make_tracing: TracingFactory
) -> None:
    tracing = make_tracing(OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test")

    handle = tracing.start({}, f"{CHAT}?api-version=1", now_ns=START_NS)
    tracing.finish(handle, full_record())

    span = await receiver.wait_for_span("chat gpt-4o-mini")
    assert span.attributes == {
        "ai_sidecar.tenant": "acme",
        "ai_sidecar.tier": "paid",
        "ai_sidecar.virtual_model": "chat",
        "ai_sidecar.cluster": "openai-cheap",
        "ai_sidecar.decision_reason": "primary breaker open",
        "ai_sidecar.rung": "fallback",
        "ai_sidecar.fallback_depth": 1,
        "ai_sidecar.skipped": ["openai-premium: breaker open"],
        "ai_sidecar.pool": "paid-pool",
        "ai_sidecar.pool_in_use": 3,
        "ai_sidecar.pool_capacity": 10,
        "ai_sidecar.priority": 50,
        "ai_sidecar.breaker_state": "closed",
        "ai_sidecar.outcome": "routed",
        "ai_sidecar.cost_usd": 0.0005,
        "ai_sidecar.stream": True,
        "url.path": CHAT,
        "http.response.status_code": 200,
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 34,
    }
    fallback = span.event("fallback")
    assert fallback.attributes == {"from_cluster": "openai-premium", "reason": "breaker open"}
    assert fallback.time_unix_nano == START_NS + 10_000_000
    transition = span.event("breaker_transition")
    assert transition.attributes["from"] == "closed"
    assert transition.attributes["to"] == "open"
    assert transition.time_unix_nano == START_NS + 250_000_000
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (
        START_NS,
        START_NS + 1_500_000_000,
    )
    assert span.status_code == "UNSET"
    assert span.service_name == "ai-routing-sidecar"
    assert span.resource["service.version"] == "1.2.3"
    assert span.resource["deployment.environment"] == "test"


async def test_a_rejected_request_is_an_error_named_by_its_path(
    receiver: OtlpReceiver, make_tracing: TracingFactory
) -> None:
    tracing = make_tracing()
    record = RequestRecord(started_at_s=5.0, path=CHAT, api_family="openai")
    record.outcome = "rejected"
    record.error_code = "missing_api_key"
    record.status = 401
    record.event("rejected", 5.001, code="missing_api_key")

    tracing.finish(tracing.start({}, CHAT), record)

    span = await receiver.wait_for_span(f"ai.route {CHAT}")
    assert (span.status_code, span.status_message) == ("ERROR", "missing_api_key")
    assert span.attributes["ai_sidecar.error_code"] == "missing_api_key"
    assert span.attributes["error.type"] == "missing_api_key"
    assert span.event("rejected").attributes == {"code": "missing_api_key"}
    assert "gen_ai.request.model" not in span.attributes
    assert "ai_sidecar.tenant" not in span.attributes


async def test_an_upstream_5xx_is_an_error(
    receiver: OtlpReceiver, make_tracing: TracingFactory
) -> None:
    tracing = make_tracing()

    tracing.finish(tracing.start({}, CHAT), routed_record(upstream_model="gpt-4o", status=503))

    span = await receiver.wait_for_span("chat gpt-4o")
    assert (span.status_code, span.status_message) == ("ERROR", "503")


def test_a_service_path_has_no_gen_ai_attributes() -> None:
    record = routed_record(path="/services/fraud/score", provider_name="json", cluster="fraud")

    attributes = span_attributes(record)

    assert not [name for name in attributes if name.startswith("gen_ai.")]
    assert attributes["url.path"] == "/services/fraud/score"
    assert attributes["ai_sidecar.cluster"] == "fraud"


@pytest.mark.parametrize(
    ("path", "operation"),
    [
        ("/api/chat", "chat"),
        ("/v1/completions", "text_completion"),
        ("/api/generate", "text_completion"),
        ("/v1/embeddings", "embeddings"),
        ("/api/embed", "embeddings"),
    ],
)
def test_the_operation_comes_from_the_path(path: str, operation: str) -> None:
    assert span_attributes(routed_record(path=path))["gen_ai.operation.name"] == operation


async def test_finishing_twice_or_with_odd_event_values_does_not_raise(
    receiver: OtlpReceiver, make_tracing: TracingFactory
) -> None:
    tracing = make_tracing()
    record = routed_record(upstream_model="m")
    record.event("odd", 100.1, thing=object(), nothing=None, many=(1, 2))

    handle = tracing.start({"traceparent": "garbage"}, CHAT)
    tracing.finish(handle, record)
    tracing.finish(handle, record)

    span = await receiver.wait_for_span("chat m")
    assert span.parent_span_id == ""
    assert set(span.event("odd").attributes) == {"thing", "many"}
    assert span.event("odd").attributes["many"] == ["1", "2"]


# --- Off --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}],
    ids=["sdk-disabled", "exporter-none"],
)
def test_the_environment_can_turn_tracing_off(environ: dict[str, str]) -> None:
    assert Tracing.from_environment(environ, "1").exporter is None


def test_disabled_tracing_is_a_no_op() -> None:
    tracing = Tracing.disabled()

    handle = tracing.start({"traceparent": traceparent()}, CHAT)
    tracing.finish(handle, full_record())
    tracing.shutdown()

    assert isinstance(handle, SpanHandle)
    assert handle.trace_id_hex == ""
    assert handle.traceparent() is None
    assert handle.tracestate() is None
    assert tracing.stats() == {
        "spans_started": 0,
        "spans_exported": 0,
        "spans_export_failed": 0,
        "spans_dropped": 0,
    }


# --- A collector that misbehaves --------------------------------------------------------------


async def test_a_healthy_collector_counts_exported_spans(
    receiver: OtlpReceiver, make_tracing: TracingFactory
) -> None:
    tracing = make_tracing()

    for _ in range(3):
        tracing.finish(tracing.start({}, CHAT), routed_record(upstream_model="m"))
    await receiver.wait_for_spans(lambda spans: len(spans) == 3)
    await asyncio.to_thread(tracing.shutdown)

    assert tracing.stats() == {
        "spans_started": 3,
        "spans_exported": 3,
        "spans_export_failed": 0,
        "spans_dropped": 0,
    }


async def test_a_refusing_collector_counts_failed_exports(
    receiver: OtlpReceiver, make_tracing: TracingFactory
) -> None:
    receiver.refuse = True
    receiver.retry_delay_s = 60  # longer than the export timeout: the exporter gives up
    tracing = make_tracing()

    for _ in range(3):
        tracing.finish(tracing.start({}, CHAT), routed_record(upstream_model="m"))
    await wait_until(lambda: tracing.stats()["spans_export_failed"] == 3)

    assert receiver.export_calls >= 1
    assert tracing.stats()["spans_exported"] == 0
    assert receiver.spans == []


async def test_a_stalled_collector_with_a_full_queue_drops_spans(
    receiver: OtlpReceiver, make_tracing: TracingFactory
) -> None:
    receiver.stall()
    tracing = make_tracing(OTEL_BSP_MAX_QUEUE_SIZE="2", OTEL_EXPORTER_OTLP_TIMEOUT="60")

    tracing.finish(tracing.start({}, CHAT), routed_record(upstream_model="m"))
    await wait_until(lambda: receiver.stalled == 1)  # the worker is held in that export
    for _ in range(5):
        tracing.finish(tracing.start({}, CHAT), routed_record(upstream_model="m"))

    assert tracing.stats()["spans_started"] == 6
    assert tracing.stats()["spans_dropped"] == 3  # 2 wait in the queue, 3 find it full
    await asyncio.to_thread(tracing.shutdown)  # gives up on the stalled export
    receiver.release()


async def test_shutdown_abandons_retries_to_a_collector_that_is_down() -> None:
    tracing = Tracing.from_environment(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{closed_address()}",
            "OTEL_BSP_SCHEDULE_DELAY": "20",
        },
        "1",
    )

    tracing.finish(tracing.start({}, CHAT), routed_record(upstream_model="m"))
    await asyncio.to_thread(tracing.shutdown)  # the exporter would retry for 10 s

    assert tracing.stats()["spans_export_failed"] == 1


def closed_address() -> str:
    """A local address nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


# --- Configuration ----------------------------------------------------------------------------


def test_http_protobuf_builds_the_http_exporter() -> None:
    tracing = Tracing.from_environment(
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "60000"},
        "1",
    )
    try:
        assert isinstance(tracing.exporter, HttpSpanExporter)
    finally:
        tracing.shutdown()


def test_grpc_is_the_default_protocol() -> None:
    tracing = Tracing.from_environment({"OTEL_BSP_SCHEDULE_DELAY": "60000"}, "1")
    try:
        assert isinstance(tracing.exporter, GrpcSpanExporter)
    finally:
        tracing.shutdown()


def test_otlp_settings_prefer_the_traces_variables() -> None:
    settings = OtlpSettings.from_environment(
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-general=1",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "api-key=secret%20value,x-team=ai",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "3",
        }
    )

    assert settings.protocol == "http/protobuf"
    assert settings.endpoint == "http://collector:4318/v1/traces"
    assert settings.headers == {"api-key": "secret value", "x-team": "ai"}
    assert settings.timeout_s == 3.0


def test_a_traces_endpoint_is_used_as_it_is() -> None:
    settings = OtlpSettings.from_environment(
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector/custom/traces",
        }
    )

    assert settings.endpoint == "https://collector/custom/traces"


def test_bad_settings_fall_back_to_defaults() -> None:
    settings = OtlpSettings.from_environment(
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon", "OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}
    )

    assert (settings.protocol, settings.endpoint) == ("grpc", "http://localhost:4317")
    assert settings.timeout_s == 10.0


def test_the_export_batch_never_exceeds_the_queue() -> None:
    settings = BatchSettings.from_environment(
        {"OTEL_BSP_MAX_QUEUE_SIZE": "4", "OTEL_BSP_SCHEDULE_DELAY": "250"}
    )

    assert settings == BatchSettings(
        max_queue_size=4, schedule_delay_ms=250, max_export_batch_size=4, export_timeout_ms=30000
    )


def test_samplers_are_the_sdks() -> None:
    ratio = sampler_from_environment(
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    )
    unknown = sampler_from_environment({"OTEL_TRACES_SAMPLER": "sometimes"})

    assert isinstance(ratio, TraceIdRatioBased)
    assert ratio.rate == 0.25
    assert isinstance(unknown, ParentBased)


def test_the_service_name_comes_from_the_environment_first() -> None:
    named = resource_from_environment(
        {
            "OTEL_SERVICE_NAME": "gateway-sidecar",
            "OTEL_RESOURCE_ATTRIBUTES": "service.name=ignored,team=ai%20platform,broken",
        },
        "2.0.0",
    )
    default = resource_from_environment({}, "2.0.0")

    assert named.attributes["service.name"] == "gateway-sidecar"
    assert named.attributes["team"] == "ai platform"
    assert named.attributes["service.version"] == "2.0.0"
    assert default.attributes["service.name"] == "ai-routing-sidecar"
