"""The fake OTLP receiver collects what the real OpenTelemetry SDK exports, and misbehaves."""

import asyncio
from collections.abc import Callable, Sequence

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from tests.fakes.otlp_receiver import AttributeValue, CollectedSpan, OtlpReceiver, decode_value
from tests.waiting import wait_until

SERVICE = "ai-sidecar-test"
SCOPE = "tests.otlp"


def _provider(*processors: SimpleSpanProcessor) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def _request_spans(tracer: Tracer) -> None:
    """A server span with a client child, as the sidecar might record one request."""
    with tracer.start_as_current_span("ext_proc request", kind=SpanKind.SERVER) as parent:
        parent.set_attribute("ai.model", "chat")
        parent.set_attribute("ai.tokens.input", 12)
        parent.set_attribute("ai.cost_usd", 0.0025)
        parent.set_attribute("ai.streamed", True)
        parent.set_attribute("ai.chain", ["openai-premium", "openai-cheap"])
        parent.set_attribute("ai.retries", [1, 2])
        parent.add_event("breaker.open", {"cluster": "openai-premium", "failures": 5})
        with tracer.start_as_current_span("upstream", kind=SpanKind.CLIENT) as child:
            child.set_status(Status(StatusCode.ERROR, "upstream returned 503"))


def _export_with_sdk(address: str, build: Callable[[Tracer], None]) -> None:
    """Record spans with ``build`` and export each as it ends (SimpleSpanProcessor)."""
    exporter = OTLPSpanExporter(endpoint=address, insecure=True, timeout=5)
    provider = _provider(SimpleSpanProcessor(exporter))
    try:
        build(provider.get_tracer(SCOPE))
    finally:
        provider.shutdown()


def _finished_spans(build: Callable[[Tracer], None]) -> Sequence[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = _provider(SimpleSpanProcessor(memory))
    build(provider.get_tracer(SCOPE))
    provider.shutdown()
    return memory.get_finished_spans()


def _export_once(address: str, timeout_s: float) -> SpanExportResult:
    """Export one finished span directly, returning what the exporter reports."""
    spans = _finished_spans(lambda tracer: tracer.start_span("lonely").end())
    exporter = OTLPSpanExporter(endpoint=address, insecure=True, timeout=timeout_s)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def _by_name(spans: list[CollectedSpan]) -> dict[str, CollectedSpan]:
    return {span.name: span for span in spans}


async def test_spans_arrive_with_attributes_events_status_and_resource(
    receiver: OtlpReceiver,
) -> None:
    await asyncio.to_thread(_export_with_sdk, receiver.address, _request_spans)
    spans = _by_name(await receiver.wait_for_spans(lambda spans: len(spans) == 2, timeout_s=5))

    parent, child = spans["ext_proc request"], spans["upstream"]
    assert parent.kind == "SERVER"
    assert child.kind == "CLIENT"
    assert parent.attributes == {
        "ai.model": "chat",
        "ai.tokens.input": 12,
        "ai.cost_usd": 0.0025,
        "ai.streamed": True,
        "ai.chain": ["openai-premium", "openai-cheap"],
        "ai.retries": [1, 2],
    }
    assert [event.name for event in parent.events] == ["breaker.open"]
    assert parent.event("breaker.open").attributes == {
        "cluster": "openai-premium",
        "failures": 5,
    }
    assert parent.event("breaker.open").time_unix_nano > 0
    assert (parent.status_code, parent.status_message) == ("UNSET", "")
    assert (child.status_code, child.status_message) == ("ERROR", "upstream returned 503")


async def test_span_ids_resource_and_scope(receiver: OtlpReceiver) -> None:
    await asyncio.to_thread(_export_with_sdk, receiver.address, _request_spans)
    spans = _by_name(await receiver.wait_for_spans(lambda spans: len(spans) == 2, timeout_s=5))

    parent, child = spans["ext_proc request"], spans["upstream"]
    assert len(parent.trace_id) == 32
    assert len(parent.span_id) == 16
    assert int(parent.trace_id, 16) != 0
    assert parent.parent_span_id == ""
    assert child.trace_id == parent.trace_id
    assert child.parent_span_id == parent.span_id
    assert parent.service_name == child.service_name == SERVICE
    assert parent.resource["telemetry.sdk.language"] == "python"
    assert parent.scope == SCOPE
    assert 0 < parent.start_time_unix_nano <= child.start_time_unix_nano
    assert child.end_time_unix_nano <= parent.end_time_unix_nano


async def test_wait_for_span_returns_the_named_span(receiver: OtlpReceiver) -> None:
    waiting = asyncio.create_task(receiver.wait_for_span("upstream", timeout_s=5))
    await asyncio.to_thread(_export_with_sdk, receiver.address, _request_spans)
    span = await waiting
    assert span.name == "upstream"
    assert receiver.export_calls == 2  # one export per span with SimpleSpanProcessor


async def test_wait_for_spans_times_out_naming_what_arrived(receiver: OtlpReceiver) -> None:
    await asyncio.to_thread(_export_once, receiver.address, 5)
    with pytest.raises(TimeoutError, match="lonely"):
        await receiver.wait_for_spans(lambda spans: len(spans) > 1, timeout_s=0.2)


async def test_clear_forgets_spans(receiver: OtlpReceiver) -> None:
    await asyncio.to_thread(_export_once, receiver.address, 5)
    assert [span.name for span in receiver.spans] == ["lonely"]
    receiver.clear()
    assert receiver.spans == []


async def test_refuse_makes_the_exporter_fail(receiver: OtlpReceiver) -> None:
    receiver.refuse = True
    # The exporter backs off about a second before retrying, more than its timeout allows.
    result = await asyncio.to_thread(_export_once, receiver.address, 0.5)
    assert result is SpanExportResult.FAILURE
    assert receiver.export_calls == 1
    assert receiver.spans == []


async def test_refuse_with_retry_delay_lets_the_exporter_retry_then_fail(
    receiver: OtlpReceiver,
) -> None:
    receiver.refuse = True
    receiver.retry_delay_s = 0.01
    result = await asyncio.to_thread(_export_once, receiver.address, 5)
    assert result is SpanExportResult.FAILURE
    assert receiver.export_calls > 1
    assert receiver.spans == []


async def test_exports_succeed_again_after_refusing(receiver: OtlpReceiver) -> None:
    receiver.refuse = True
    assert await asyncio.to_thread(_export_once, receiver.address, 0.5) is SpanExportResult.FAILURE
    receiver.refuse = False
    assert await asyncio.to_thread(_export_once, receiver.address, 5) is SpanExportResult.SUCCESS
    assert [span.name for span in receiver.spans] == ["lonely"]


async def test_stall_holds_the_export_until_released(receiver: OtlpReceiver) -> None:
    receiver.stall()
    export = asyncio.create_task(asyncio.to_thread(_export_once, receiver.address, 5))
    await wait_until(lambda: receiver.stalled == 1, timeout_s=5)
    assert not export.done()
    assert receiver.spans == []

    receiver.release()
    assert await export is SpanExportResult.SUCCESS
    assert receiver.stalled == 0
    assert [span.name for span in receiver.spans] == ["lonely"]


async def test_stalled_export_fails_at_the_client_deadline(receiver: OtlpReceiver) -> None:
    receiver.stall()
    result = await asyncio.to_thread(_export_once, receiver.address, 0.5)
    assert result is SpanExportResult.FAILURE
    await wait_until(lambda: receiver.stalled == 0, timeout_s=5)
    receiver.release()
    assert receiver.spans == []


async def test_stop_releases_stalled_calls() -> None:
    receiver = OtlpReceiver()
    address = await receiver.start()
    receiver.stall()
    export = asyncio.create_task(asyncio.to_thread(_export_once, address, 2))
    await wait_until(lambda: receiver.stalled == 1, timeout_s=5)
    await receiver.stop()
    await export  # returns (either way) instead of hanging
    assert receiver.stalled == 0


async def test_start_returns_the_bound_address() -> None:
    receiver = OtlpReceiver()
    address = await receiver.start()
    try:
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.1"
        assert int(port) > 0
        assert receiver.address == address
        with pytest.raises(RuntimeError):
            await receiver.start()
    finally:
        await receiver.stop()
    await receiver.stop()  # stopping twice is harmless


def _kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(AnyValue(string_value="x"), "x", id="string"),
        pytest.param(AnyValue(string_value=""), "", id="empty-string"),
        pytest.param(AnyValue(int_value=-3), -3, id="int"),
        pytest.param(AnyValue(double_value=0.5), 0.5, id="double"),
        pytest.param(AnyValue(bool_value=False), False, id="bool"),
        pytest.param(AnyValue(bytes_value=b"\x00\x01"), b"\x00\x01", id="bytes"),
        pytest.param(AnyValue(), None, id="empty"),
        pytest.param(
            AnyValue(
                array_value=ArrayValue(
                    values=[AnyValue(int_value=1), AnyValue(string_value="a"), AnyValue()]
                )
            ),
            [1, "a", None],
            id="array",
        ),
        pytest.param(
            AnyValue(
                kvlist_value=KeyValueList(
                    values=[
                        _kv("k", AnyValue(bool_value=True)),
                        _kv("nested", AnyValue(array_value=ArrayValue(values=[]))),
                    ]
                )
            ),
            {"k": True, "nested": []},
            id="kvlist",
        ),
    ],
)
def test_decode_value(value: AnyValue, expected: AttributeValue) -> None:
    assert decode_value(value) == expected
