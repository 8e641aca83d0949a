"""Objective routing through the real Envoy: the demo's paid 'assistant' goes to the
cheapest cluster whose live p95 is under 2 s and whose accuracy is at least 0.85; a
slow premium cluster loses its traffic to the dedicated one, and gets it back once it
is fast again.
"""

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sidecar_demo.stack import ReplicaStack
from tests.conftest import DEMO_POLICY
from tests.e2e.conftest import Harness
from tests.e2e.replicas import ReplicaFactory
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e


def short_window_policy(directory: Path) -> Path:
    """The demo policy with live latency judged over the last 3 s instead of 5 min, from
    the first sample on."""
    policy = yaml.safe_load(DEMO_POLICY.read_text())
    policy["routing"]["latency_window_s"] = 3
    policy["models"]["assistant"]["objective"]["min_latency_samples"] = 1
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


async def ask(http: aiohttp.ClientSession, replica: ReplicaStack, **headers: str) -> Any:
    document = {"model": "assistant", "messages": [{"role": "user", "content": "Hello"}]}
    async with http.post(
        f"{replica.envoy_url}/v1/chat/completions",
        json=document,
        headers={"authorization": "Bearer sk-demo-paid", **headers},
    ) as response:
        assert response.status == 200
        return (await response.json())["model"]


async def test_a_slow_cluster_loses_its_traffic_and_wins_it_back(
    start_replicas: ReplicaFactory, harness: Harness, tmp_path: Path
) -> None:
    (replica,) = start_replicas(1, short_window_policy(tmp_path))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        # general: premium (0.88) and dedicated (0.90) meet 0.85; premium is cheaper.
        assert await ask(http, replica) == "gpt-4o"
        # A task the cheap model cannot do well enough, named by the trusted header.
        assert await ask(http, replica, **{"x-task-family": "code"}) == "gpt-4o"

        await harness.servers["openai-premium"].set_fault(latency_ms=2500)
        assert await ask(http, replica) == "gpt-4o", "the slow answer still comes back"
        assert await ask(http, replica) == "gpt-4o-enterprise", "its p95 is now over 2 s"

        await harness.servers["openai-premium"].clear_fault()

        async def back_on_premium() -> bool:
            return bool(await ask(http, replica) == "gpt-4o")

        # Once the slow samples age out of the 3 s window, premium is tried and kept.
        await wait_until(back_on_premium, timeout_s=15)
        assert await ask(http, replica) == "gpt-4o"
