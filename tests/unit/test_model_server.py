"""Unit tests of the fake model servers, their fault injection and their control client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar_demo.fault_control import FaultControl, FaultControlError
from sidecar_demo.faults import NO_FAULT, Fault, FaultSpecError, FaultState
from sidecar_demo.model_server import (
    DEMO_FLEET,
    SERVER_STATE,
    ModelServers,
    ModelServerSpec,
    RequestRecorder,
    build_app,
)
from sidecar_demo.replies import embed_text, estimate_tokens

OPENAI_SPEC = ModelServerSpec(name="cheap", api="openai", model="gpt-4o-mini", port=0)
OLLAMA_SPEC = ModelServerSpec(name="local", api="ollama", model="llama3.2", port=0)
CHAT_BODY: dict[str, Any] = {
    "model": "anything-else",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there world"},
    ],
}


@dataclass
class Harness:
    client: TestClient[web.Request, web.Application]
    control: FaultControl
    sleeps: list[float]
    app: web.Application


async def _harness(spec: ModelServerSpec) -> AsyncIterator[Harness]:
    sleeps: list[float] = []

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    app = build_app(spec, sleep=record_sleep)
    async with TestClient(TestServer(app)) as client:
        control = FaultControl(str(client.make_url("")), client.session)
        yield Harness(client, control, sleeps, app)


@pytest.fixture
async def openai() -> AsyncIterator[Harness]:
    async for harness in _harness(OPENAI_SPEC):
        yield harness


@pytest.fixture
async def ollama() -> AsyncIterator[Harness]:
    async for harness in _harness(OLLAMA_SPEC):
        yield harness


def _sse_data(text: str) -> list[str]:
    return [event.removeprefix("data: ") for event in text.split("\n\n") if event]


def _sse_events(text: str) -> list[dict[str, Any]]:
    data = _sse_data(text)
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def _ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


# --- Pure helpers ---------------------------------------------------------------------------


def test_estimate_tokens_is_one_per_four_characters_rounded_up() -> None:
    assert [estimate_tokens(text) for text in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]


def test_embedding_is_deterministic_unit_vector_of_eight_floats() -> None:
    vector = embed_text("hello")
    assert vector == embed_text("hello")
    assert vector != embed_text("world")
    assert len(vector) == 8
    assert sum(value * value for value in vector) == pytest.approx(1.0, abs=1e-4)


def test_demo_fleet_names_apis_models_and_ports() -> None:
    assert [(s.name, s.api, s.model, s.port) for s in DEMO_FLEET] == [
        ("passthrough", "openai", "echo", 18000),
        ("openai-cheap", "openai", "gpt-4o-mini", 18001),
        ("openai-premium", "openai", "gpt-4o", 18002),
        ("enterprise-dedicated", "openai", "gpt-4o-enterprise", 18003),
        ("ollama-local", "ollama", "llama3.2", 18004),
        ("fraud-model", "openai", "fraud-v1", 18005),
        ("rules-engine", "openai", "rules-v1", 18006),
    ]


def test_recorder_keeps_only_the_latest_entries() -> None:
    recorder = RequestRecorder(capacity=2)
    for index in range(3):
        body = json.dumps({"n": index}).encode()
        recorder.record(method="POST", path="/p", query="", headers={}, body=body)
    assert [entry["json"] for entry in recorder.entries()] == [{"n": 1}, {"n": 2}]
    recorder.clear()
    assert recorder.entries() == []


# --- Fault descriptions and state -----------------------------------------------------------


def test_fault_from_json_defaults_fail_status_to_503() -> None:
    fault = Fault.from_json({"mode": "fail", "count": 2, "retry_after": 5})
    assert fault == Fault(mode="fail", status=503, count=2, retry_after=5)
    assert fault.to_json() == {
        "mode": "fail",
        "status": 503,
        "count": 2,
        "retry_after": 5,
        "latency_ms": 0,
        "chunk_delay_ms": 0,
    }


def test_fault_from_json_accepts_delays_without_mode() -> None:
    assert Fault.from_json({"latency_ms": 200, "chunk_delay_ms": 50}) == Fault(
        latency_ms=200, chunk_delay_ms=50
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "JSON object"),
        ({}, "sets nothing"),
        ({"mode": "explode"}, "mode must be one of"),
        ({"mode": "fail", "staus": 500}, "unknown fault fields: staus"),
        ({"mode": "fail", "status": 200}, "status must be at least 400"),
        ({"mode": "fail", "status": "503"}, "status must be an integer"),
        ({"mode": "fail", "count": 0}, "count must be at least 1"),
        ({"mode": "stall", "status": 503}, "status only applies to mode 'fail'"),
        ({"latency_ms": True}, "latency_ms must be an integer"),
        ({"latency_ms": -1}, "latency_ms must be at least 0"),
    ],
)
def test_fault_from_json_rejects_bad_input(data: object, message: str) -> None:
    with pytest.raises(FaultSpecError, match=message):
        Fault.from_json(data)


def test_fault_state_counts_down_and_clears_itself() -> None:
    state = FaultState()
    fault = Fault(mode="fail", status=503, count=2)
    state.set(fault)
    assert state.take() == fault
    assert state.describe() == {**fault.to_json(), "remaining": 1}
    assert state.take() == fault
    assert state.take() is NO_FAULT
    assert state.describe() is None


def test_fault_state_without_count_stays_until_cleared() -> None:
    state = FaultState()
    state.set(Fault(latency_ms=10))
    assert [state.take().latency_ms for _ in range(3)] == [10, 10, 10]
    state.clear()
    assert state.take() is NO_FAULT


# --- OpenAI API -----------------------------------------------------------------------------


async def test_chat_completion_names_own_model_and_counts_tokens(openai: Harness) -> None:
    response = await openai.client.post("/v1/chat/completions", json=CHAT_BODY)
    assert response.status == 200
    body = await response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "[cheap] hello there world"}
    assert choice["finish_reason"] == "stop"
    prompt_tokens = estimate_tokens("Be brief.") + estimate_tokens("hello there world")
    completion_tokens = estimate_tokens("[cheap] hello there world")
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def test_chat_completion_reads_text_content_parts(openai: Harness) -> None:
    parts = [
        {"type": "text", "text": "from"},
        {"type": "image_url"},
        {"type": "text", "text": "parts"},
    ]
    body = {"model": "m", "messages": [{"role": "user", "content": parts}]}
    response = await openai.client.post("/v1/chat/completions", json=body)
    assert (await response.json())["choices"][0]["message"]["content"] == "[cheap] from parts"


async def test_chat_completion_honours_max_tokens(openai: Harness) -> None:
    response = await openai.client.post("/v1/chat/completions", json={**CHAT_BODY, "max_tokens": 2})
    body = await response.json()
    assert body["choices"][0]["message"]["content"] == "[cheap] "
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


async def test_chat_stream_sends_role_deltas_finish_and_usage(openai: Harness) -> None:
    request = {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}
    response = await openai.client.post("/v1/chat/completions", json=request)
    assert response.content_type == "text/event-stream"
    events = _sse_events(await response.text())
    assert {event["model"] for event in events} == {"gpt-4o-mini"}
    assert {event["object"] for event in events} == {"chat.completion.chunk"}
    assert len({event["id"] for event in events}) == 1
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content_chunks = events[1:-2]
    assert len(content_chunks) > 1
    text = "".join(event["choices"][0]["delta"]["content"] for event in content_chunks)
    assert text == "[cheap] hello there world"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(event["usage"] is None for event in events[:-1])
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == estimate_tokens(text)


async def test_chat_stream_without_include_usage_has_no_usage_chunk(openai: Harness) -> None:
    response = await openai.client.post("/v1/chat/completions", json={**CHAT_BODY, "stream": True})
    events = _sse_events(await response.text())
    assert all("usage" not in event for event in events)
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


async def test_legacy_completion(openai: Harness) -> None:
    response = await openai.client.post("/v1/completions", json={"model": "x", "prompt": "say hi"})
    body = await response.json()
    assert body["object"] == "text_completion"
    assert body["model"] == "gpt-4o-mini"
    assert body["choices"][0]["text"] == "[cheap] say hi"
    assert body["usage"]["prompt_tokens"] == estimate_tokens("say hi")


async def test_legacy_completion_stream(openai: Harness) -> None:
    request = {
        "model": "x",
        "prompt": "say hi",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = await openai.client.post("/v1/completions", json=request)
    events = _sse_events(await response.text())
    assert "".join(event["choices"][0]["text"] for event in events[:-1]) == "[cheap] say hi"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["usage"]["total_tokens"] > 0


async def test_embeddings_for_a_list_of_inputs(openai: Harness) -> None:
    request = {"model": "text-embedding-3-small", "input": ["alpha", "beta"]}
    response = await openai.client.post("/v1/embeddings", json=request)
    body = await response.json()
    assert body["object"] == "list"
    assert body["model"] == "gpt-4o-mini"
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert body["data"][1]["embedding"] == embed_text("beta")
    tokens = estimate_tokens("alpha") + estimate_tokens("beta")
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


@pytest.mark.parametrize(
    ("path", "data", "message"),
    [
        ("/v1/chat/completions", b"{not json", "not valid JSON"),
        ("/v1/chat/completions", b"[]", "must be a JSON object"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user"}]}', "'model' is required"),
        ("/v1/chat/completions", b'{"model": "m", "messages": []}', "'messages' is required"),
        ("/v1/chat/completions", b'{"model": "m", "messages": [1]}', "string 'role'"),
        ("/v1/completions", b'{"model": "m", "prompt": 5}', "'prompt' must be a string"),
        ("/v1/embeddings", b'{"model": "m", "input": []}', "'input' must be a string"),
    ],
)
async def test_bad_openai_request_gets_openai_error(
    openai: Harness, path: str, data: bytes, message: str
) -> None:
    response = await openai.client.post(path, data=data)
    assert response.status == 400
    body = await response.json()
    assert message in body["error"]["message"]
    assert body["error"] | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


# --- Ollama API -----------------------------------------------------------------------------


async def test_ollama_chat_streams_ndjson_by_default(ollama: Harness) -> None:
    response = await ollama.client.post("/api/chat", json=CHAT_BODY)
    assert response.content_type == "application/x-ndjson"
    lines = _ndjson(await response.text())
    assert {line["model"] for line in lines} == {"llama3.2"}
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    text = "".join(line["message"]["content"] for line in lines)
    assert text == "[local] hello there world"
    final = lines[-1]
    assert final["done_reason"] == "stop"
    assert final["eval_count"] == estimate_tokens(text)
    assert final["total_duration"] == (
        final["load_duration"] + final["prompt_eval_duration"] + final["eval_duration"]
    )


async def test_ollama_chat_without_stream(ollama: Harness) -> None:
    response = await ollama.client.post("/api/chat", json={**CHAT_BODY, "stream": False})
    body = await response.json()
    assert body["model"] == "llama3.2"
    assert body["message"] == {"role": "assistant", "content": "[local] hello there world"}
    assert body["done"] is True
    assert body["prompt_eval_count"] == estimate_tokens("Be brief.") + estimate_tokens(
        "hello there world"
    )
    assert body["created_at"].endswith("Z")


async def test_ollama_generate(ollama: Harness) -> None:
    request = {"model": "x", "prompt": "why is the sky blue"}
    streamed = _ndjson(await (await ollama.client.post("/api/generate", json=request)).text())
    assert "".join(line["response"] for line in streamed) == "[local] why is the sky blue"
    response = await ollama.client.post("/api/generate", json={**request, "stream": False})
    body = await response.json()
    assert body["response"] == "[local] why is the sky blue"
    assert body["eval_count"] == estimate_tokens(body["response"])


async def test_ollama_server_also_serves_openai_api(ollama: Harness) -> None:
    response = await ollama.client.post("/v1/chat/completions", json=CHAT_BODY)
    assert (await response.json())["model"] == "llama3.2"


async def test_bad_ollama_request_gets_ollama_error(ollama: Harness) -> None:
    response = await ollama.client.post("/api/generate", json={"prompt": "hi"})
    assert response.status == 400
    assert await response.json() == {"error": "'model' is required and must be a non-empty string"}


async def test_openai_server_does_not_serve_ollama_api(openai: Harness) -> None:
    response = await openai.client.post("/api/chat", json=CHAT_BODY)
    assert (await response.json())["path"] == "/api/chat"


# --- Echo and recording ---------------------------------------------------------------------


async def test_other_paths_are_echoed(openai: Harness) -> None:
    response = await openai.client.post(
        "/upload?a=1&b=2", data=b"x" * 1000, headers={"X-Custom": "yes"}
    )
    body = await response.json()
    assert body["server"] == "cheap"
    assert (body["method"], body["path"], body["query"]) == ("POST", "/upload", "a=1&b=2")
    assert body["body_bytes"] == 1000
    assert body["headers"]["x-custom"] == "yes"


async def test_get_on_an_ai_path_is_echoed(openai: Harness) -> None:
    response = await openai.client.get("/v1/chat/completions")
    assert (await response.json())["method"] == "GET"


async def test_requests_are_recorded_but_control_calls_are_not(openai: Harness) -> None:
    await openai.client.post("/v1/chat/completions", json=CHAT_BODY, headers={"X-Tenant": "t1"})
    await openai.client.get("/anything?q=1")
    await openai.client.get("/_control/health")
    recorded = await openai.control.recorded_requests()
    assert [(entry["method"], entry["path"]) for entry in recorded] == [
        ("POST", "/v1/chat/completions"),
        ("GET", "/anything"),
    ]
    assert recorded[0]["headers"]["x-tenant"] == "t1"
    assert recorded[0]["json"] == CHAT_BODY
    assert recorded[0]["body_bytes"] == len(json.dumps(CHAT_BODY))
    assert (recorded[1]["json"], recorded[1]["query"]) == (None, "q=1")
    await openai.control.clear_recorded()
    assert await openai.control.recorded_requests() == []


async def test_health(openai: Harness) -> None:
    response = await openai.client.get("/_control/health")
    assert await response.json() == {"status": "ok", "name": "cheap", "model": "gpt-4o-mini"}


async def test_unknown_control_endpoint_is_404_and_not_echoed(openai: Harness) -> None:
    response = await openai.client.post("/_control/fault")
    assert response.status == 404
    assert await openai.control.recorded_requests() == []


# --- Faults over HTTP -----------------------------------------------------------------------


async def test_fail_fault_with_count_then_recovers(openai: Harness) -> None:
    await openai.control.set_fault(mode="fail", status=503, count=2, retry_after=5)
    for _ in range(2):
        response = await openai.client.post("/v1/chat/completions", json=CHAT_BODY)
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        error = (await response.json())["error"]
        assert (error["type"], error["message"]) == ("server_error", "injected fault: HTTP 503")
    assert await openai.control.current_fault() is None
    response = await openai.client.post("/v1/chat/completions", json=CHAT_BODY)
    assert response.status == 200
    assert len(await openai.control.recorded_requests()) == 3


async def test_fail_fault_uses_ollama_error_shape_on_ollama_api(ollama: Harness) -> None:
    await ollama.control.set_fault(mode="fail", status=429)
    response = await ollama.client.post("/api/chat", json=CHAT_BODY)
    assert response.status == 429
    assert await response.json() == {"error": "injected fault: HTTP 429"}
    assert "Retry-After" not in response.headers


async def test_faults_skip_echo_and_control_paths(openai: Harness) -> None:
    await openai.control.set_fault(mode="fail", status=500, count=1)
    assert (await openai.client.post("/upload", data=b"x")).status == 200
    assert (await openai.client.get("/_control/health")).status == 200
    fault = await openai.control.current_fault()
    assert fault is not None
    assert fault["remaining"] == 1


async def test_get_fault_describes_the_active_fault(openai: Harness) -> None:
    await openai.control.set_fault(latency_ms=200, count=3)
    response = await openai.client.get("/_control/fault")
    assert await response.json() == {
        "fault": {"latency_ms": 200, "chunk_delay_ms": 0, "count": 3, "remaining": 3},
        "stalled": 0,
    }
    await openai.control.clear_fault()
    assert await openai.control.current_fault() is None


async def test_bad_fault_is_rejected_with_a_clear_error(openai: Harness) -> None:
    with pytest.raises(FaultControlError, match=r"HTTP 400.*unknown fault fields: mdoe") as caught:
        await openai.control.set_fault(mdoe="fail")
    assert caught.value.status == 400
    response = await openai.client.put("/_control/fault", data=b"{oops")
    assert response.status == 400
    assert "a fault must be a JSON object" in (await response.json())["error"]


async def test_latency_is_requested_before_answering(openai: Harness) -> None:
    await openai.control.set_fault(latency_ms=200)
    response = await openai.client.post("/v1/chat/completions", json=CHAT_BODY)
    assert response.status == 200
    assert openai.sleeps == [0.2]


async def test_chunk_delay_is_requested_between_stream_chunks(openai: Harness) -> None:
    await openai.control.set_fault(chunk_delay_ms=50)
    response = await openai.client.post("/v1/chat/completions", json={**CHAT_BODY, "stream": True})
    chunks = _sse_data(await response.text())
    assert openai.sleeps == [0.05] * (len(chunks) - 1)


async def test_chunk_delay_does_not_apply_to_whole_bodies(openai: Harness) -> None:
    await openai.control.set_fault(chunk_delay_ms=50)
    await openai.client.post("/v1/chat/completions", json=CHAT_BODY)
    assert openai.sleeps == []


async def test_reset_drops_the_connection(openai: Harness) -> None:
    await openai.control.set_fault(mode="reset", count=1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await openai.client.post("/v1/chat/completions", json=CHAT_BODY)
    response = await openai.client.post("/v1/chat/completions", json=CHAT_BODY)
    assert response.status == 200


async def test_fail_midstream_sends_first_chunk_then_drops(openai: Harness) -> None:
    await openai.control.set_fault(mode="fail_midstream")
    response = await openai.client.post("/v1/chat/completions", json={**CHAT_BODY, "stream": True})
    assert response.status == 200
    first = await response.content.readuntil(b"\n\n")
    assert json.loads(first.removeprefix(b"data: "))["choices"][0]["delta"]["role"] == "assistant"
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_fail_midstream_truncates_a_whole_body(openai: Harness) -> None:
    await openai.control.set_fault(mode="fail_midstream")
    response = await openai.client.post("/v1/chat/completions", json=CHAT_BODY)
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_stall_holds_the_request_until_the_fault_is_cleared(openai: Harness) -> None:
    await openai.control.set_fault(mode="stall", count=1)
    stalled = asyncio.create_task(openai.client.post("/v1/chat/completions", json=CHAT_BODY))
    await openai.control.wait_for_stalled(1)
    assert not stalled.done()
    assert await openai.control.current_fault() is None
    await openai.control.clear_fault()
    response = await stalled
    assert response.status == 200
    assert (await response.json())["model"] == "gpt-4o-mini"
    assert openai.app[SERVER_STATE].faults.stalled == 0


async def test_stall_ends_when_the_client_goes_away(openai: Harness) -> None:
    await openai.control.set_fault(mode="stall")
    stalled = asyncio.create_task(openai.client.post("/v1/chat/completions", json=CHAT_BODY))
    await openai.control.wait_for_stalled(1)
    stalled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stalled
    await openai.control.wait_for_stalled(0)
    fault = await openai.control.current_fault()
    assert fault is not None
    assert fault["mode"] == "stall"


async def test_stall_is_bounded_by_max_stall() -> None:
    app = build_app(OPENAI_SPEC, max_stall_s=0)
    async with TestClient(TestServer(app)) as client:
        await client.put("/_control/fault", json={"mode": "stall"})
        response = await client.post("/v1/chat/completions", json=CHAT_BODY)
        assert response.status == 200


async def test_wait_for_stalled_rejects_a_bad_count(openai: Harness) -> None:
    response = await openai.client.get("/_control/stalled?count=-1")
    assert response.status == 400


# --- Running servers ------------------------------------------------------------------------


async def test_model_servers_serve_each_spec_and_release_stalls_on_stop() -> None:
    servers = ModelServers()
    await servers.start([OPENAI_SPEC, OLLAMA_SPEC])
    try:
        async with aiohttp.ClientSession() as session:
            urls = servers.base_urls
            for spec in (OPENAI_SPEC, OLLAMA_SPEC):
                async with session.get(urls[spec.name] + "/_control/health") as response:
                    assert (await response.json())["model"] == spec.model
            control = FaultControl(urls["local"], session)
            await control.set_fault(mode="stall")
            stalled = asyncio.create_task(
                session.post(urls["local"] + "/api/chat", json={**CHAT_BODY, "stream": False})
            )
            await control.wait_for_stalled(1)
            await servers.stop()
            async with await stalled as response:
                assert (await response.json())["model"] == "llama3.2"
    finally:
        await servers.stop()
    assert servers.base_urls == {}


async def test_model_servers_reject_duplicate_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        await ModelServers().start([OPENAI_SPEC, OPENAI_SPEC])


async def test_model_servers_stop_started_servers_when_one_fails() -> None:
    servers = ModelServers()
    await servers.start([OPENAI_SPEC])
    port = int(servers.base_urls["cheap"].rsplit(":", 1)[1])
    clash = ModelServerSpec(name="clash", api="openai", model="m", port=port)
    others = ModelServers()
    try:
        with pytest.raises(OSError, match=r"(?i)address already in use"):
            await others.start([OLLAMA_SPEC, clash])
        assert others.base_urls == {}
    finally:
        await servers.stop()
