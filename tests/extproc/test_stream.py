"""The ext_proc service over real gRPC, as Envoy drives it, without Envoy.

Each test opens streams to a server started in the test's event loop and plays
Envoy's side: request headers, then the buffered body.
"""

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from google.protobuf import json_format, struct_pb2

from sidecar.core.clock import FakeClock
from sidecar.core.router import ActivePolicy
from sidecar.engine.runtime import RoutingRuntime
from sidecar.extproc.grpc_server import GrpcServer
from sidecar.extproc.server import ExternalProcessorService, StreamRegistry
from tests.waiting import wait_until


class Sidecar:
    def __init__(self, registry: StreamRegistry, stub: Any) -> None:
        self.registry = registry
        self.stub = stub

    async def exchange(self, *requests: Any) -> list[Any]:
        """Send each request and read its answer, stopping early on an immediate response."""
        call = self.stub.Process()
        answers = []
        for request in requests:
            await call.write(request)
            answer = await call.read()
            answers.append(answer)
            if answer.HasField("immediate_response"):
                break
        await call.done_writing()
        return answers


@pytest.fixture
async def sidecar(demo_active: ActivePolicy) -> AsyncIterator[Sidecar]:
    address = f"unix-abstract:ai-sidecar-test-{uuid.uuid4().hex}"
    registry = StreamRegistry()
    runtime = RoutingRuntime(demo_active, FakeClock())
    server = GrpcServer(ExternalProcessorService(lambda: runtime, registry), address, 1 << 20)
    await server.start()
    async with grpc.aio.insecure_channel(address) as channel:
        yield Sidecar(registry, ext_proc_grpc.ExternalProcessorStub(channel))
    await server.stop(0)


def headers(
    path: str = "/v1/chat/completions",
    key: str | None = "sk-demo-paid",
    method: str = "POST",
    end_of_stream: bool = False,
    extra: dict[str, str] | None = None,
    claims: dict[str, Any] | None = None,
) -> Any:
    values = {":method": method, ":path": path, "content-type": "application/json"}
    if key is not None:
        values["authorization"] = f"Bearer {key}"
    values.update(extra or {})
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()]
    )
    request = ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(headers=header_map, end_of_stream=end_of_stream)
    )
    if claims is not None:
        payload = struct_pb2.Struct()
        payload.update({"jwt_payload": claims})
        request.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].CopyFrom(payload)
    return request


def body(document: Any, end_of_stream: bool = True) -> Any:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return ext_proc.ProcessingRequest(
        request_body=ext_proc.HttpBody(body=raw, end_of_stream=end_of_stream)
    )


PAID_CHAT_CHAIN = "chain--openai-premium--openai-cheap--ollama-local"
"""The aggregate cluster a paid chat request goes to: it may fail over down the chain."""


def chat(model: str = "chat") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


def set_headers(answer: Any) -> dict[str, str]:
    mutation = answer.request_body.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def error_of(answer: Any) -> tuple[int, Any]:
    immediate = answer.immediate_response
    return immediate.status.code, json.loads(immediate.body)


async def test_a_routed_request_gets_cluster_model_and_credential(sidecar: Sidecar) -> None:
    first, second = await sidecar.exchange(headers(), body(chat()))
    assert first.HasField("request_headers")
    common = second.request_body.response
    rewritten = json.loads(common.body_mutation.body)
    assert rewritten == {**chat(), "model": "gpt-4o"}
    assert set_headers(second) == {
        "x-ai-sidecar-cluster": PAID_CHAT_CHAIN,
        "x-envoy-max-retries": "2",
        "content-length": str(len(common.body_mutation.body)),
        "content-type": "application/json",
        "authorization": "Bearer sk-upstream-openai-demo",
        ":path": "/v1/chat/completions",
    }
    removed = set(common.header_mutation.remove_headers)
    assert "authorization" not in removed, "it is overwritten with the cluster's credential"
    assert {"x-api-key", "openai-organization", "cookie"} <= removed
    assert common.clear_route_cache
    plan = json_format.MessageToDict(second.dynamic_metadata)["ai.sidecar"]
    assert plan["hops"] == ["openai-premium", "openai-cheap", "ollama-local"]
    assert len(plan["call"]) == 32, "a random id, never one the client chose"


async def test_a_cluster_without_credential_gets_the_client_key_removed(sidecar: Sidecar) -> None:
    _, second = await sidecar.exchange(headers(), body(chat("local")))
    assert set_headers(second)["x-ai-sidecar-cluster"] == "ollama-local"
    assert set_headers(second)["x-envoy-max-retries"] == "0", "one cluster: no retry"
    metadata = json_format.MessageToDict(second.dynamic_metadata)["ai.sidecar"]
    assert "hops" not in metadata, "one cluster: no failover plan"
    assert (metadata["tenant"], metadata["cluster"]) == ("demo-paid", "ollama-local")
    assert "authorization" not in set_headers(second)
    assert "authorization" in second.request_body.response.header_mutation.remove_headers


async def test_a_verified_token_claim_identifies_the_tenant(sidecar: Sidecar) -> None:
    _, second = await sidecar.exchange(
        headers(key="not-a-key", claims={"tenant": "demo-sso", "sub": "u1"}), body(chat())
    )
    assert set_headers(second)["x-ai-sidecar-cluster"] == PAID_CHAT_CHAIN


async def test_non_ai_paths_pass_through_without_their_body(sidecar: Sidecar) -> None:
    (answer,) = await sidecar.exchange(headers(path="/upload", key=None))
    assert answer.HasField("request_headers")
    assert not answer.request_headers.response.HasField("header_mutation")
    assert answer.mode_override.request_body_mode == processing_mode_pb2.ProcessingMode.NONE


ERROR_CASES = [
    ("missing key", [headers(key=None)], 401, "missing_api_key"),
    ("unknown key", [headers(key="sk-wrong")], 401, "invalid_api_key"),
    ("token for an unknown tenant", [headers(claims={"tenant": "x"})], 401, "unknown_tenant"),
    ("GET on an AI path", [headers(method="GET", end_of_stream=True)], 405, "method_not_allowed"),
    ("no body", [headers(end_of_stream=True)], 400, "invalid_body"),
    (
        "declared body over the limit is refused before buffering",
        [headers(extra={"content-length": str((1 << 20) + 1)})],
        413,
        "request_too_large",
    ),
    ("body over the limit", [headers(), body(b"x" * ((1 << 20) + 1))], 413, "request_too_large"),
    ("not JSON", [headers(), body(b"model=chat")], 400, "invalid_body"),
    ("not UTF-8", [headers(), body(b'{"model": "\xc3\x28"}')], 400, "invalid_body"),
    (
        "UTF-16 is not UTF-8",
        [headers(), body('{"model": "chat"}'.encode("utf-16"))],
        400,
        "invalid_body",
    ),
    (
        "NaN is not JSON",
        [headers(), body(b'{"model": "chat", "temperature": NaN}')],
        400,
        "invalid_body",
    ),
    (
        "a number too long to read",
        [headers(), body(b'{"model": "chat", "n": ' + b"9" * 5000 + b"}")],
        400,
        "invalid_body",
    ),
    (
        "nesting too deep",
        [headers(), body(b'{"model": "chat", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}")],
        400,
        "invalid_body",
    ),
    ("JSON but not an object", [headers(), body([1, 2])], 400, "invalid_body"),
    ("no model", [headers(), body({"messages": []})], 400, "invalid_body"),
    ("model not a string", [headers(), body({"model": 3})], 400, "invalid_body"),
    ("unknown model", [headers(), body(chat("gpt-9"))], 404, "model_not_found"),
    (
        "no route for the tier",
        [headers(key="sk-demo-free"), body(chat("premium"))],
        403,
        "model_not_allowed",
    ),
    (
        "body in parts (Envoy misconfigured)",
        [headers(), body(chat(), end_of_stream=False)],
        500,
        "sidecar_misconfigured",
    ),
]


@pytest.mark.parametrize(
    ("requests", "status", "code"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
async def test_bad_requests_get_a_status_and_an_openai_error(
    sidecar: Sidecar, requests: list[Any], status: int, code: str
) -> None:
    answers = await sidecar.exchange(*requests)
    got_status, error = error_of(answers[-1])
    assert (got_status, error["error"]["code"]) == (status, code)
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["message"]


async def test_lone_surrogates_are_forwarded_as_json_escapes(sidecar: Sidecar) -> None:
    raw = b'{"model": "chat", "messages": [{"role": "user", "content": "\\ud800"}]}'
    _, second = await sidecar.exchange(headers(), body(raw))
    rewritten = second.request_body.response.body_mutation.body
    assert b"\\ud800" in rewritten
    assert json.loads(rewritten)["messages"][0]["content"] == "\ud800"


async def test_ollama_paths_get_errors_in_ollama_shape(sidecar: Sidecar) -> None:
    (answer,) = await sidecar.exchange(headers(path="/api/chat", key="sk-nope"))
    status, error = error_of(answer)
    assert status == 401
    assert error == {"error": "Incorrect API key provided."}


async def test_the_service_keeps_serving_after_bad_requests(sidecar: Sidecar) -> None:
    for requests, _, _ in [case[1:] for case in ERROR_CASES]:
        await sidecar.exchange(*requests)
    _, routed = await sidecar.exchange(headers(), body(chat()))
    assert set_headers(routed)["x-ai-sidecar-cluster"] == PAID_CHAT_CHAIN


async def test_a_cancelled_stream_leaves_nothing_behind(sidecar: Sidecar) -> None:
    call = sidecar.stub.Process()
    await call.write(headers())
    await call.read()
    await wait_until(lambda: sidecar.registry.active == 1)
    call.cancel()
    await wait_until(lambda: sidecar.registry.active == 0)
    assert sidecar.registry.finished == 1


async def test_an_internal_error_answers_500_and_serving_goes_on(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_route(*args: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr("sidecar.engine.runtime.route", broken_route)
    _, answer = await sidecar.exchange(headers(), body(chat()))
    status, error = error_of(answer)
    assert (status, error["error"]["code"]) == (500, "sidecar_internal_error")
    assert sidecar.registry.failed == 1
    monkeypatch.undo()
    _, routed = await sidecar.exchange(headers(), body(chat()))
    assert set_headers(routed)["x-ai-sidecar-cluster"] == PAID_CHAT_CHAIN
