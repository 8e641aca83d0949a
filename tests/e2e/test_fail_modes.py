"""What Envoy does when the sidecar is unreachable, in both fail modes of envoy/envoy.yaml.

The file fails closed (``ai_sidecar.fail_open: 0``); operators flip to fail open through
Envoy's runtime, as these tests do. Either way a client-sent routing header decides
nothing.
"""

import os
import signal
from collections.abc import AsyncIterator

import pytest

from tests.e2e.conftest import Harness

pytestmark = pytest.mark.e2e

SPOOF = {"x-ai-sidecar-cluster": "enterprise-dedicated"}
MODEL_SERVERS = ("openai-cheap", "openai-premium", "enterprise-dedicated", "ollama-local")


@pytest.fixture
async def sidecar_down(harness: Harness) -> AsyncIterator[Harness]:
    harness.stack.sidecar.stop()
    yield harness
    if harness.stack.sidecar.pid is None:
        harness.stack.sidecar.start()


async def test_fail_closed_answers_503_and_ignores_a_spoofed_header(sidecar_down: Harness) -> None:
    async with await sidecar_down.chat("sk-demo-free", headers=SPOOF) as response:
        assert response.status == 503
        error = (await response.json())["error"]
    assert error["code"] == "ai_sidecar_unavailable"
    assert error["type"] == "server_error"
    for server in MODEL_SERVERS:
        assert await sidecar_down.recorded(server) == [], f"{server} must not be reached"


async def test_fail_open_sends_to_the_default_cluster_without_credentials(
    sidecar_down: Harness,
) -> None:
    await sidecar_down.set_fail_open(100)
    async with await sidecar_down.chat("sk-demo-free", headers=SPOOF) as response:
        assert response.status == 200
        assert response.headers["x-ai-gateway-fallback"] == "fail-open"
        assert (await response.json())["model"] == "llama3.2"
    assert await sidecar_down.recorded("enterprise-dedicated") == []
    (seen,) = await sidecar_down.recorded("ollama-local")
    assert "authorization" not in seen["headers"], "the tenant's key must not go upstream"
    assert "x-ai-sidecar-cluster" not in seen["headers"]


async def test_fail_closed_is_back_when_the_override_is_dropped(sidecar_down: Harness) -> None:
    await sidecar_down.set_fail_open(100)
    await sidecar_down.set_fail_open(None)
    async with await sidecar_down.chat("sk-demo-free") as response:
        assert response.status == 503


async def test_routing_resumes_when_the_sidecar_returns(sidecar_down: Harness) -> None:
    async with await sidecar_down.chat("sk-demo-paid") as response:
        assert response.status == 503
    sidecar_down.stack.sidecar.start()
    async with await sidecar_down.chat("sk-demo-paid", headers=SPOOF) as response:
        assert response.status == 200
        assert (await response.json())["model"] == "gpt-4o"


async def test_a_hung_sidecar_costs_one_message_timeout_then_the_fail_mode(
    harness: Harness,
) -> None:
    pid = harness.stack.sidecar.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        async with await harness.chat("sk-demo-paid", headers=SPOOF) as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "ai_sidecar_unavailable"
    finally:
        os.kill(pid, signal.SIGCONT)
    async with await harness.chat("sk-demo-paid") as response:
        assert response.status == 200, "routing resumes when the sidecar does"
