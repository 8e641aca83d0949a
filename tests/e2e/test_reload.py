"""Hot reload through the real Envoy: a new policy file changes routing for new requests
while a request under way finishes under the policy it started with; a broken file is
refused and routing goes on unchanged.
"""

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar_demo.stack import DEMO_CREDENTIALS, ReplicaStack
from tests.conftest import DEMO_POLICY
from tests.e2e.conftest import Harness
from tests.e2e.replicas import ReplicaFactory, paid_chat
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

TOKEN = {"authorization": f"Bearer {DEMO_CREDENTIALS['AI_SIDECAR_ADMIN_TOKEN']}"}
PAID_CHAT_ROUTE = "cluster: openai-premium\n        fallback: [openai-cheap, ollama-local]\n"
CHEAP_CHAT_ROUTE = "cluster: openai-cheap\n        fallback: [ollama-local]\n"


async def chat(http: aiohttp.ClientSession, replica: ReplicaStack) -> tuple[int, Any]:
    status, content_type, body = await paid_chat(http, replica.envoy_url)
    assert content_type == "application/json"
    return status, json.loads(body)


async def state(http: aiohttp.ClientSession, replica: ReplicaStack) -> Any:
    async with http.get(f"{replica.sidecar_admin_url}/state") as response:
        return await response.json()


async def metrics(http: aiohttp.ClientSession, replica: ReplicaStack) -> str:
    async with http.get(f"{replica.sidecar_admin_url}/metrics") as response:
        return await response.text()


def policy_copy(tmp_path: Path) -> Path:
    """The demo policy without the paid chat canary, whose chain would follow the route."""
    text = DEMO_POLICY.read_text()
    start = text.index("        # A canary:")
    end = text.index("\n", text.index("rollback: {window", start)) + 1
    text = text[:start] + text[end:]
    assert text.count(PAID_CHAT_ROUTE) == 1
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


async def test_a_reload_moves_new_requests_and_lets_one_under_way_finish(
    start_replicas: ReplicaFactory, harness: Harness, tmp_path: Path
) -> None:
    policy = policy_copy(tmp_path)
    (replica,) = start_replicas(1, policy)
    premium = harness.servers["openai-premium"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        before = (await state(http, replica))["policy"]["digest"]
        await premium.set_fault(mode="stall", count=1)
        under_way = asyncio.create_task(chat(http, replica))
        await premium.wait_for_stalled(1)

        policy.write_text(policy.read_text().replace(PAID_CHAT_ROUTE, CHEAP_CHAT_ROUTE))
        assert replica.sidecar.pid is not None
        replica.sidecar.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]

        async def reloaded() -> bool:
            return bool((await state(http, replica))["policy"]["digest"] != before)

        await wait_until(reloaded)
        status, answer = await chat(http, replica)
        assert (status, answer["model"]) == (200, "gpt-4o-mini")

        await premium.clear_fault()
        status, answer = await under_way
        assert (status, answer["model"]) == (200, "gpt-4o")
        assert 'ai_sidecar_policy_reloads_total{result="applied"} 1.0' in await metrics(
            http, replica
        )


async def test_a_broken_policy_is_refused_and_routing_goes_on(
    start_replicas: ReplicaFactory, tmp_path: Path
) -> None:
    policy = policy_copy(tmp_path)
    (replica,) = start_replicas(1, policy)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        before = (await state(http, replica))["policy"]["digest"]
        # A route to a cluster that does not exist: the whole file is refused.
        policy.write_text(policy.read_text().replace(PAID_CHAT_ROUTE, "cluster: openai-gone\n"))

        async def refused_by_the_watcher() -> bool:
            text = await metrics(http, replica)
            return 'ai_sidecar_policy_reloads_total{result="refused"} 1.0' in text

        await wait_until(refused_by_the_watcher)
        who = {"actor": "release-bot", "reason": "deploy 42"}
        async with http.post(
            f"{replica.sidecar_admin_url}/reload", json=who, headers=TOKEN
        ) as response:
            assert response.status == 422
            answer = await response.json()
        assert answer["result"] == "refused"
        assert any("unknown cluster 'openai-gone'" in p for p in answer["problems"])
        assert (await state(http, replica))["policy"]["digest"] == before
        status, chat_answer = await chat(http, replica)
        assert (status, chat_answer["model"]) == (200, "gpt-4o")
