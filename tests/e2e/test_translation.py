"""Chains across API families through the real Envoy: Ollama's API served by OpenAI.

The seed scenario: an app calls Ollama's ``POST /api/generate``; its tier's chain for
the model starts with an OpenAI-style cluster, with the local Ollama as fallback.
"""

import json
from typing import Any

import pytest

from tests.e2e.conftest import ENVOY, Harness

pytestmark = pytest.mark.e2e

FREE = {"authorization": "Bearer sk-demo-free"}


async def generate(harness: Harness, **extra: Any) -> Any:
    document = {"model": "chat", "prompt": "Why is the sky blue?", **extra}
    return await harness.http.post(f"{ENVOY}/api/generate", json=document, headers=FREE)


async def test_generate_is_served_by_the_openai_primary_in_ollamas_shape(
    harness: Harness,
) -> None:
    async with await generate(harness, stream=False, options={"num_predict": 50}) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("application/json")
        answer = await response.json()
    assert answer["model"] == "gpt-4o-mini"
    assert answer["done"] is True
    assert answer["response"].startswith("[openai-cheap] Why is the sky blue?")
    assert answer["eval_count"] > 0
    (seen,) = await harness.recorded("openai-cheap")
    assert seen["path"] == "/v1/chat/completions"
    assert seen["json"]["model"] == "gpt-4o-mini"
    assert seen["json"]["messages"] == [{"role": "user", "content": "Why is the sky blue?"}]
    assert seen["json"]["max_tokens"] == 50


async def test_a_streamed_generate_arrives_as_ollama_ndjson(harness: Harness) -> None:
    async with await generate(harness) as response:  # Ollama streams by default
        assert response.status == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) async for line in response.content if line.strip()]
    assert all(line["model"] == "gpt-4o-mini" for line in lines)
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    text = "".join(line.get("response", "") for line in lines)
    assert text.startswith("[openai-cheap] Why is the sky blue?")
    (seen,) = await harness.recorded("openai-cheap")
    assert seen["json"]["stream"] is True
    assert seen["json"]["stream_options"] == {"include_usage": True}


async def test_when_the_openai_primary_fails_the_local_ollama_answers_natively(
    harness: Harness,
) -> None:
    await harness.servers["openai-cheap"].set_fault(mode="fail", status=503)
    async with await generate(harness, stream=False) as response:
        assert response.status == 200
        assert response.headers["x-ai-sidecar-rung"] == "fallback"
        answer = await response.json()
    assert answer["model"] == "llama3.2"
    assert answer["response"].startswith("[ollama-local]")
    (seen,) = await harness.recorded("ollama-local")
    assert seen["path"] == "/api/generate", "the Ollama hop gets Ollama's own API"
    assert seen["json"]["model"] == "llama3.2"
    assert "authorization" not in seen["headers"]


async def test_an_openai_error_reaches_an_ollama_client_in_ollamas_shape(
    harness: Harness,
) -> None:
    for name in ("openai-cheap", "ollama-local"):
        await harness.servers[name].set_fault(mode="fail", status=500, count=1)
    async with harness.http.post(
        f"{ENVOY}/api/chat",
        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": False},
        headers=FREE,
    ) as response:
        assert response.status == 500
        body = await response.json()
    assert isinstance(body["error"], str)


async def test_a_request_no_hop_can_take_is_the_clients_error_not_a_breaker_failure(
    harness: Harness,
) -> None:
    paid = {"authorization": "Bearer sk-demo-paid"}
    for _ in range(6):
        async with harness.http.post(
            f"{ENVOY}/api/generate",
            json={"model": "chat", "prompt": "a", "suffix": "b", "stream": False},
            headers=paid,
        ) as response:
            assert response.status == 400
    async with harness.http.get("http://127.0.0.1:9902/state") as response:
        premium = (await response.json())["clusters"]["openai-premium"]
    assert premium["breaker"] == "closed"
    assert premium["failure_rate"] == 0
