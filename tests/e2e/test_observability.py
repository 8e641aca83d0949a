"""Traces, metrics and logs of real requests through the real Envoy.

A real OTLP receiver (tests/fakes/otlp_receiver.py) collects the sidecar's spans;
``/metrics`` on the admin port is scraped after known traffic; Envoy's access log and
the sidecar's decision log are read back from their files.
"""

import asyncio
import json
import secrets
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ENVOY, SIDECAR_ADMIN_URL, BackgroundReceiver, Harness
from tests.fakes.otlp_receiver import CollectedSpan
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e


def traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


async def chat(harness: Harness, key: str, **headers: str) -> tuple[int, Any]:
    document = {"model": "chat", "messages": [{"role": "user", "content": "Hello there"}]}
    headers = {"authorization": f"Bearer {key}", **headers}
    async with harness.http.post(
        f"{ENVOY}/v1/chat/completions", json=document, headers=headers
    ) as response:
        return response.status, await response.json()


async def span_of(otlp: BackgroundReceiver, trace_id: str) -> CollectedSpan:
    def found() -> bool:
        return any(span.trace_id == trace_id for span in otlp.spans)

    await wait_until(found)
    return next(span for span in otlp.spans if span.trace_id == trace_id)


async def scrape(harness: Harness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with harness.http.get(f"{SIDECAR_ADMIN_URL}/metrics") as response:
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_request_with_a_traceparent_yields_a_child_span_and_joins_upstream(
    harness: Harness, otlp: BackgroundReceiver
) -> None:
    header, trace_id, parent_id = traceparent()
    status, answer = await chat(harness, "sk-demo-paid", traceparent=header)
    assert status == 200
    span = await span_of(otlp, trace_id)
    assert span.parent_span_id == parent_id
    assert span.name == "chat gpt-4o"
    assert span.service_name == "ai-routing-sidecar"
    expected = {
        "ai_sidecar.tenant": "demo-paid",
        "ai_sidecar.tier": "paid",
        "ai_sidecar.virtual_model": "chat",
        "ai_sidecar.cluster": "openai-premium",
        "ai_sidecar.rung": "primary",
        "ai_sidecar.outcome": "routed",
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": answer["usage"]["prompt_tokens"],
        "gen_ai.usage.output_tokens": answer["usage"]["completion_tokens"],
        "http.response.status_code": 200,
    }
    assert {name: span.attributes.get(name) for name in expected} == expected
    assert span.attributes["ai_sidecar.cost_usd"] > 0
    text = json.dumps(span.attributes)
    assert "Hello there" not in text, "prompt text stays out of spans"
    assert "sk-" not in text, "no keys or credentials in spans"
    (seen,) = await harness.recorded("openai-premium")
    upstream = seen["headers"]["traceparent"].split("-")
    assert upstream[1] == trace_id, "the model server joins the same trace"
    assert upstream[2] == span.span_id, "as a child of the sidecar's span"


async def test_a_request_without_trace_context_starts_a_new_trace(
    harness: Harness, otlp: BackgroundReceiver
) -> None:
    await chat(harness, "sk-demo-free")
    (seen,) = await harness.recorded("openai-cheap")
    trace_id = seen["headers"]["traceparent"].split("-")[1]
    span = await span_of(otlp, trace_id)
    assert span.parent_span_id in ("", None)


async def test_a_fallback_and_a_shed_request_carry_their_events(
    fresh: Harness, otlp: BackgroundReceiver
) -> None:
    await fresh.servers["openai-premium"].set_fault(mode="fail", status=503)
    header, trace_id, _ = traceparent()
    status, answer = await chat(fresh, "sk-demo-paid", traceparent=header)
    assert (status, answer["model"]) == (200, "gpt-4o-mini")
    span = await span_of(otlp, trace_id)
    assert span.attributes["ai_sidecar.rung"] == "fallback"
    assert span.event("fallback").attributes["from_cluster"] == "openai-premium"

    cheap = fresh.servers["openai-cheap"]
    await cheap.set_fault(mode="stall")
    holders = [asyncio.create_task(chat(fresh, "sk-demo-free")) for _ in range(4)]
    await cheap.wait_for_stalled(4)
    header, trace_id, _ = traceparent()
    micro = {"x-transaction-amount": "0.1", "traceparent": header}
    status, _ = await chat(fresh, "sk-demo-free", **micro)
    assert status == 503
    span = await span_of(otlp, trace_id)
    assert span.event("shed").attributes["pool"] == "free"
    assert span.status_code.endswith("ERROR")
    assert span.attributes["ai_sidecar.outcome"] == "shed"
    await cheap.clear_fault()
    await asyncio.gather(*holders)


async def test_metrics_count_requests_tokens_and_cost(harness: Harness) -> None:
    before = await scrape(harness)
    answers = [await chat(harness, "sk-demo-free") for _ in range(5)]
    await chat(harness, "sk-nobody")
    labels = {"model": "chat", "cluster": "openai-cheap", "tier": "free"}
    unknown = {"model": "none", "cluster": "none", "tier": "none", "outcome": "rejected"}
    counted: dict[str, Any] = {}

    async def all_counted() -> bool:
        # A request is counted when its ext_proc stream ends, just after the answer.
        counted["after"] = await scrape(harness)
        routed = value(counted["after"], "ai_sidecar_requests_total", **labels, outcome="routed")
        refused = value(counted["after"], "ai_sidecar_requests_total", **unknown)
        before_routed = value(before, "ai_sidecar_requests_total", **labels, outcome="routed")
        return routed - before_routed >= 5 and refused > value(
            before, "ai_sidecar_requests_total", **unknown
        )

    await wait_until(all_counted)
    after = counted["after"]

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert delta("ai_sidecar_requests_total", outcome="routed") == 5
    prompt = sum(answer["usage"]["prompt_tokens"] for _, answer in answers)
    completion = sum(answer["usage"]["completion_tokens"] for _, answer in answers)
    assert delta("ai_sidecar_tokens_total", direction="input") == prompt
    assert delta("ai_sidecar_tokens_total", direction="output") == completion
    cost = (prompt * 0.15 + completion * 0.60) / 1_000_000
    assert delta("ai_sidecar_cost_usd_total") == pytest.approx(cost)
    assert delta("ai_sidecar_request_duration_seconds_count") == 5
    rejected = value(after, "ai_sidecar_requests_total", **unknown) - value(
        before, "ai_sidecar_requests_total", **unknown
    )
    assert rejected == 1
    assert value(after, "ai_sidecar_breaker_state", cluster="openai-cheap") == 0
    assert value(after, "ai_sidecar_pool_capacity", pool="free") == 4


async def test_routing_goes_on_while_the_trace_backend_refuses_or_stalls(
    fresh: Harness, otlp: BackgroundReceiver
) -> None:
    otlp.do(lambda: setattr(otlp.receiver, "refuse", True))
    try:
        statuses = [(await chat(fresh, "sk-demo-paid"))[0] for _ in range(20)]
        assert statuses == [200] * 20
        await wait_until(lambda: _export_failed(fresh), timeout_s=15)
    finally:
        otlp.do(lambda: setattr(otlp.receiver, "refuse", False))
    otlp.do(otlp.receiver.stall)
    try:
        statuses = [(await chat(fresh, "sk-demo-paid"))[0] for _ in range(20)]
        assert statuses == [200] * 20, "a stalled backend never holds a request"
    finally:
        otlp.do(otlp.receiver.release)


async def _export_failed(harness: Harness) -> bool:
    return value(await scrape(harness), "ai_sidecar_spans_export_failed_total") > 0


async def test_envoys_access_log_and_the_decision_log_say_why(harness: Harness) -> None:
    request_id = f"access-log-{secrets.token_hex(4)}"
    header, trace_id, _ = traceparent()
    await chat(harness, "sk-demo-enterprise", **{"x-request-id": request_id, "traceparent": header})
    log_dir = harness.stack.layout.log_dir

    def access_line() -> dict[str, Any] | None:
        for line in (log_dir / "envoy.log").read_text().splitlines():
            if request_id in line and line.startswith("{"):
                entry: dict[str, Any] = json.loads(line)
                return entry
        return None

    await wait_until(lambda: access_line() is not None)
    entry = access_line()
    assert entry is not None
    assert (entry["tenant"], entry["tier"], entry["model"]) == (
        "demo-enterprise",
        "enterprise",
        "chat",
    )
    assert (entry["decided_cluster"], entry["rung"]) == ("enterprise-dedicated", "primary")
    assert int(entry["output_tokens"]) > 0
    assert float(entry["cost_usd"]) > 0

    def decision_line() -> dict[str, Any] | None:
        for line in (log_dir / "sidecar.log").read_text().splitlines():
            if f'"trace_id": "{trace_id}"' in line and '"message": "request"' in line:
                entry: dict[str, Any] = json.loads(line)
                return entry
        return None

    await wait_until(lambda: decision_line() is not None)
    decision = decision_line()
    assert decision is not None
    assert (decision["logger"], decision["tenant"], decision["model"]) == (
        "sidecar.decisions",
        "demo-enterprise",
        "chat",
    )
    assert (decision["cluster"], decision["rung"], decision["status"]) == (
        "enterprise-dedicated",
        "primary",
        200,
    )


async def test_the_request_that_trips_a_breaker_carries_the_transition(
    fresh: Harness, otlp: BackgroundReceiver
) -> None:
    await fresh.servers["openai-premium"].set_fault(mode="fail", status=503)
    trace_ids = []
    for _ in range(6):
        header, trace_id, _ = traceparent()
        trace_ids.append(trace_id)
        assert (await chat(fresh, "sk-demo-paid", traceparent=header))[0] == 200

    def tripped() -> list[CollectedSpan]:
        return [
            span
            for span in otlp.spans
            if span.trace_id in trace_ids
            and any(event.name == "breaker_transition" for event in span.events)
        ]

    await wait_until(lambda: bool(tripped()))
    (span,) = tripped()
    event = span.event("breaker_transition")
    assert (event.attributes["cluster"], event.attributes["to_state"]) == ("openai-premium", "open")
    assert str(event.attributes["reason"]).startswith("failure rate")


async def test_a_streamed_answer_reports_its_usage(
    harness: Harness, otlp: BackgroundReceiver
) -> None:
    header, trace_id, _ = traceparent()
    document = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"authorization": "Bearer sk-demo-free", "traceparent": header}
    async with harness.http.post(
        f"{ENVOY}/v1/chat/completions", json=document, headers=headers
    ) as response:
        events = [line async for line in response.content if line.startswith(b"data: ")]
    usage = json.loads(events[-2][6:])["usage"]
    span = await span_of(otlp, trace_id)
    assert span.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert span.attributes["ai_sidecar.stream"] is True
    (seen,) = await harness.recorded("openai-cheap")
    assert seen["json"]["stream_options"] == {"include_usage": True}, "asked for usage"


async def test_live_latency_of_a_slowed_cluster_shows_in_state_and_metrics(fresh: Harness) -> None:
    await fresh.servers["openai-premium"].set_fault(latency_ms=300, count=3)
    for _ in range(3):
        assert (await fresh.chat("sk-demo-paid")).status == 200

    async def measured() -> bool:
        latency = (await fresh.sidecar_state())["clusters"]["openai-premium"]["latency"]
        return bool(latency["samples"] == 3)

    await wait_until(measured)
    latency = (await fresh.sidecar_state())["clusters"]["openai-premium"]["latency"]
    assert latency["ttft_p95_s"] >= 0.3
    assert latency["total_p50_s"] >= latency["ttft_p50_s"]
    async with fresh.http.get(f"{SIDECAR_ADMIN_URL}/metrics") as response:
        text = await response.text()
    samples = {
        (sample.labels["kind"], sample.labels["quantile"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ai_sidecar_cluster_latency_seconds"
        and sample.labels["cluster"] == "openai-premium"
    }
    assert samples[("ttft", "0.95")] >= 0.3
    assert set(samples) == {("ttft", "0.5"), ("ttft", "0.95"), ("total", "0.5"), ("total", "0.95")}
