"""Routing through the real Envoy: tiers, identity, credentials, streaming, bad input."""

import asyncio
import io
import json
from typing import Any

import pytest

from sidecar_demo.tokens import DEMO_JWT_SECRET, mint_token
from tests.e2e.conftest import ENVOY, Harness, jwt_for
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

UPSTREAM_CREDENTIALS = {
    "openai-cheap": "Bearer sk-upstream-openai-demo",
    "openai-premium": "Bearer sk-upstream-openai-demo",
    "enterprise-dedicated": "Bearer sk-upstream-enterprise-demo",
}


@pytest.mark.parametrize(
    ("key", "cluster", "upstream_model"),
    [
        ("sk-demo-free", "openai-cheap", "gpt-4o-mini"),
        ("sk-demo-paid", "openai-premium", "gpt-4o"),
        ("sk-demo-enterprise", "enterprise-dedicated", "gpt-4o-enterprise"),
    ],
    ids=["free", "paid", "enterprise"],
)
async def test_each_tier_reaches_its_own_cluster_with_the_model_rewritten(
    harness: Harness, key: str, cluster: str, upstream_model: str
) -> None:
    identity = {"openai-organization": "org-client", "cookie": "session=1", "x-api-key": key}
    async with await harness.chat(key, headers=identity) as response:
        assert response.status == 200
        assert response.headers["x-ai-sidecar-rung"] == "primary"
        answer = await response.json()
    assert answer["model"] == upstream_model
    (seen,) = await harness.recorded(cluster)
    assert not {"openai-organization", "cookie", "x-api-key"} & set(seen["headers"])
    assert seen["json"]["model"] == upstream_model
    assert seen["json"]["messages"] == [{"role": "user", "content": "Hello"}]
    assert int(seen["headers"]["content-length"]) == seen["body_bytes"]
    assert seen["headers"]["authorization"] == UPSTREAM_CREDENTIALS[cluster]
    assert key not in json.dumps(seen), "the tenant's key must never reach the upstream"


async def test_a_cluster_without_credential_gets_no_authorization(harness: Harness) -> None:
    async with await harness.chat("sk-demo-paid", model="local") as response:
        assert (await response.json())["model"] == "llama3.2"
    (seen,) = await harness.recorded("ollama-local")
    assert "authorization" not in seen["headers"]


async def test_a_verified_jwt_names_the_tenant(harness: Harness) -> None:
    headers = {"authorization": f"Bearer {jwt_for('demo-sso')}"}
    async with await harness.chat(None, headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["model"] == "gpt-4o"
    (seen,) = await harness.recorded("openai-premium")
    assert seen["headers"]["authorization"] == UPSTREAM_CREDENTIALS["openai-premium"]


@pytest.mark.parametrize(
    ("claims", "secret", "reason"),
    [
        (
            {"iss": "demo-issuer", "tenant": "demo-enterprise", "exp": 4102444800},
            b"guess",
            "Jwt verification fails",
        ),
        (
            {"iss": "demo-issuer", "tenant": "demo-enterprise"},
            DEMO_JWT_SECRET,
            "Jwt verification fails",
        ),
        (
            {"iss": "demo-issuer", "tenant": "demo-enterprise", "exp": 1000},
            DEMO_JWT_SECRET,
            "Jwt is expired",
        ),
    ],
    ids=["forged", "no expiry", "expired"],
)
async def test_a_jwt_envoy_refuses_identifies_nobody_and_says_why(
    harness: Harness, claims: dict[str, Any], secret: bytes, reason: str
) -> None:
    token = mint_token(claims, secret=secret)
    async with await harness.chat(None, headers={"authorization": f"Bearer {token}"}) as response:
        assert response.status == 401
        error = (await response.json())["error"]
    assert error["code"] == "invalid_token"
    assert reason.lower() in error["message"].lower()


async def test_a_verified_jwt_for_an_unknown_tenant_is_refused(harness: Harness) -> None:
    headers = {"authorization": f"Bearer {jwt_for('mallory')}"}
    async with await harness.chat(None, headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unknown_tenant"


async def test_a_spoofed_routing_header_is_ignored(harness: Harness) -> None:
    spoof = {"x-ai-sidecar-cluster": "enterprise-dedicated"}
    async with await harness.chat("sk-demo-free", headers=spoof) as response:
        assert (await response.json())["model"] == "gpt-4o-mini"
    assert await harness.recorded("enterprise-dedicated") == []
    (seen,) = await harness.recorded("openai-cheap")
    assert "x-ai-sidecar-cluster" not in seen["headers"], "the routing header stays inside"


async def test_the_ollama_api_reaches_the_local_model(harness: Harness) -> None:
    document = {"model": "local", "prompt": "Why is the sky blue?", "stream": False}
    headers = {"authorization": "Bearer sk-demo-free"}
    async with harness.http.post(f"{ENVOY}/api/generate", json=document, headers=headers) as r:
        answer = await r.json()
    assert answer["model"] == "llama3.2"
    assert answer["done"] is True
    (seen,) = await harness.recorded("ollama-local")
    assert seen["path"] == "/api/generate"
    assert seen["json"] == {**document, "model": "llama3.2"}


async def test_a_streamed_answer_arrives_as_server_sent_events(harness: Harness) -> None:
    options = {"stream": True, "stream_options": {"include_usage": True}}
    async with await harness.chat("sk-demo-paid", **options) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line async for line in response.content if line.startswith(b"data: ")]
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    assert events[-1].strip() == b"data: [DONE]"
    assert {chunk["model"] for chunk in chunks} == {"gpt-4o"}
    assert chunks[-1]["usage"]["total_tokens"] > 0


BAD_INPUTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("missing key", {"key": None}, 401, "missing_api_key"),
    ("unknown key", {"key": "sk-nobody"}, 401, "invalid_api_key"),
    ("unknown model", {"body": {"model": "gpt-9", "messages": []}}, 404, "model_not_found"),
    (
        "no route for the tier",
        {"key": "sk-demo-free", "body": {"model": "premium"}},
        403,
        "model_not_allowed",
    ),
    ("not JSON", {"raw": b"model=chat"}, 400, "invalid_body"),
    ("malformed JSON", {"raw": b'{"model": "chat",'}, 400, "invalid_body"),
    ("no model", {"body": {"messages": []}}, 400, "invalid_body"),
    (
        "body over the policy limit",
        {"raw": b'{"model":"chat","x":"' + b"a" * (1 << 20) + b'"}'},
        413,
        "request_too_large",
    ),
    ("GET on an AI path", {"method": "GET"}, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(
    ("request_parts", "status", "code"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
async def test_bad_input_gets_its_status_and_an_openai_error(
    harness: Harness, request_parts: dict[str, Any], status: int, code: str
) -> None:
    key = request_parts.get("key", "sk-demo-paid")
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    body = request_parts.get("raw")
    if body is None:
        body = json.dumps(request_parts.get("body", {"model": "chat"})).encode()
    method = request_parts.get("method", "POST")
    data = io.BytesIO(body) if method == "POST" else None
    url = f"{ENVOY}/v1/chat/completions"
    async with harness.http.request(method, url, data=data, headers=headers) as response:
        assert response.status == status
        assert response.headers["content-type"] == "application/json"
        error = (await response.json())["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    for server in ("openai-cheap", "openai-premium", "enterprise-dedicated", "ollama-local"):
        assert await harness.recorded(server) == [], f"{server} must not see a refused request"


async def test_a_chunked_body_over_envoys_buffer_gets_413(harness: Harness) -> None:
    # Chunked, so no content-length lets the sidecar refuse it early: Envoy's own buffer
    # limit (2 MiB) answers. The answer is read while the client still sends, as a real
    # client would, so the test does not depend on when Envoy closes the connection.
    reader, writer = await asyncio.open_connection("127.0.0.1", 10000)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-demo-paid\r\n"
        b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    chunk = b"a" * (64 << 10)
    for _ in range(34):  # 2 MiB + 128 KiB
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    error = json.loads(await reader.readexactly(length))["error"]
    writer.transport.abort()
    assert head.startswith(b"HTTP/1.1 413")
    assert error["code"] == "request_payload_too_large"
    assert error["type"] == "invalid_request_error"


async def test_a_declared_body_over_the_policy_limit_is_refused_before_it_is_sent(
    harness: Harness,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", 10000)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-demo-paid\r\n"
        b"content-type: application/json\r\ncontent-length: 5000000\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    error = json.loads(await reader.readexactly(length))["error"]
    writer.transport.abort()
    assert head.startswith(b"HTTP/1.1 413")
    assert error["code"] == "request_too_large"


async def test_errors_on_the_ollama_api_use_its_shape(harness: Harness) -> None:
    async with harness.http.post(f"{ENVOY}/api/chat", json={"model": "local"}) as response:
        assert response.status == 401
        assert await response.json() == {
            "error": "No API key provided. Send it as 'Authorization: Bearer <key>'."
        }


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/models", 404),
        ("/v1/chat/completions/", 404),
        ("/V1/chat/completions", 404),
        ("/api/embeddings", 404),
        ("/v1/chat%2Fcompletions", 400),
    ],
)
async def test_ai_looking_paths_the_sidecar_does_not_know_are_refused(
    harness: Harness, path: str, status: int
) -> None:
    headers = {"authorization": "Bearer sk-demo-paid"}
    async with harness.http.post(
        f"{ENVOY}{path}", json={"model": "chat"}, headers=headers
    ) as response:
        assert response.status == status
    assert await harness.recorded("passthrough") == [], "the key must not reach passthrough"


async def test_non_ai_paths_pass_through_untouched_and_unbuffered(harness: Harness) -> None:
    before = await harness.sidecar_streams()
    payload = b"x" * (3 << 20)  # larger than Envoy's 2 MiB buffer: it cannot have been buffered
    headers = {"authorization": "Bearer not-for-the-sidecar", "x-custom": "kept"}
    url = f"{ENVOY}/upload?a=1"
    async with harness.http.post(url, data=io.BytesIO(payload), headers=headers) as response:
        assert response.status == 200
        echo = await response.json()
    assert echo["server"] == "passthrough"
    assert echo["body_bytes"] == len(payload)
    assert echo["query"] == "a=1"
    assert echo["headers"]["authorization"] == "Bearer not-for-the-sidecar"
    assert echo["headers"]["x-custom"] == "kept"
    after = await harness.sidecar_streams()
    assert after["finished"] == before["finished"], "the sidecar must not see non-AI requests"


async def test_a_client_gone_mid_body_leaves_no_stream_behind(harness: Harness) -> None:
    before = await harness.sidecar_streams()
    _reader, writer = await asyncio.open_connection("127.0.0.1", 10000)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-demo-paid\r\n"
        b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n" + b'{"model": "ch'
    )
    await writer.drain()
    await wait_until(_streams_reach(harness, active=before["active"] + 1))
    writer.close()
    await writer.wait_closed()
    await wait_until(_streams_reach(harness, active=0, finished=before["finished"] + 1))


async def test_a_client_gone_while_the_model_stalls_leaves_nothing_behind(
    harness: Harness,
) -> None:
    premium = harness.servers["openai-premium"]
    await premium.set_fault(mode="stall")
    before = await harness.sidecar_streams()
    request = asyncio.create_task(harness.chat("sk-demo-paid"))
    await premium.wait_for_stalled(1)
    assert (await harness.sidecar_streams())["active"] == before["active"] + 1
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await premium.wait_for_stalled(0)
    await wait_until(_streams_reach(harness, active=0, finished=before["finished"] + 1))
    async with await harness.chat("sk-demo-free") as response:
        assert response.status == 200, "routing goes on after the cancelled request"


def _streams_reach(harness: Harness, **expected: int) -> Any:
    async def check() -> bool:
        streams = await harness.sidecar_streams()
        return all(streams[name] == value for name, value in expected.items())

    return check
