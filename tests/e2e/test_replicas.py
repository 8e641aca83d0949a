"""Sidecar replicas, each with its own Envoy, beside the demo stack.

Smoke test of the ``start_replicas`` fixture: each replica's Envoy answers, and the
request is counted by that replica's own sidecar, not by another replica's nor by the
demo stack's.
"""

import json
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar_demo.stack import ReplicaStack
from tests.conftest import DEMO_POLICY
from tests.e2e.conftest import SIDECAR_ADMIN_URL
from tests.e2e.replicas import ReplicaFactory, paid_chat
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

ROUTED_PAID_CHAT = {
    "model": "chat",
    "cluster": "openai-premium",
    "tier": "paid",
    "outcome": "routed",
}


async def chat(http: aiohttp.ClientSession, envoy_url: str) -> tuple[int, dict[str, Any]]:
    status, content_type, body = await paid_chat(http, envoy_url)
    assert content_type == "application/json"
    answer: dict[str, Any] = json.loads(body)
    return status, answer


async def routed(http: aiohttp.ClientSession, sidecar_admin_url: str) -> float:
    """The sidecar's count of paid ``chat`` requests routed to openai-premium."""
    async with http.get(f"{sidecar_admin_url}/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ai_sidecar_requests_total" and sample.labels == ROUTED_PAID_CHAT:
                return sample.value
    return 0.0


async def test_each_replica_routes_through_its_own_sidecar(
    start_replicas: ReplicaFactory,
) -> None:
    replicas = start_replicas(2, DEMO_POLICY)
    assert [replica.index for replica in replicas] == [1, 2]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def counts_are(expected: list[float], of: list[ReplicaStack]) -> None:
            seen: list[float] = []

            async def counted() -> bool:
                seen[:] = [await routed(http, replica.sidecar_admin_url) for replica in of]
                return seen == expected

            try:
                await wait_until(counted)
            except TimeoutError:
                pytest.fail(f"routed counts {seen}, expected {expected}")

        demo_before = await routed(http, SIDECAR_ADMIN_URL)
        await counts_are([0, 0], replicas)
        for sent, replica in enumerate(replicas, start=1):
            status, answer = await chat(http, replica.envoy_url)
            assert (status, answer["model"]) == (200, "gpt-4o")
            # Counted once the ext_proc stream ends, just after the answer.
            await counts_are([1] * sent + [0] * (len(replicas) - sent), replicas)
        assert await routed(http, SIDECAR_ADMIN_URL) == demo_before

        first = replicas[0]
        first.restart_sidecar()
        await counts_are([0], [first])
        status, _ = await chat(http, first.envoy_url)
        assert status == 200
        await counts_are([1, 1], replicas)
