"""SLO burn through the real Envoy: when chat's error budget burns fast, degraded mode
switches on by itself, and off again once the burn subsides."""

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sidecar_demo.stack import ReplicaStack
from tests.conftest import DEMO_POLICY
from tests.e2e.conftest import Harness
from tests.e2e.replicas import ReplicaFactory, paid_chat
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

CHAT_CLUSTERS = ("openai-premium", "openai-cheap", "ollama-local")


def fast_slo_policy(directory: Path) -> Path:
    """The demo policy with chat's SLO judged over seconds instead of an hour."""
    policy = yaml.safe_load(DEMO_POLICY.read_text())
    policy["models"]["chat"]["slo"] = {
        "availability_percent": 90,
        "short_window_s": 2,
        "long_window_s": 6,
        "burn_rate": 2,
        "minimum_requests": 5,
        "flag": "degraded-mode",
    }
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


async def chat(http: aiohttp.ClientSession, replica: ReplicaStack) -> int:
    status, _, _ = await paid_chat(http, replica.envoy_url)
    return status


async def degraded_mode(http: aiohttp.ClientSession, replica: ReplicaStack) -> Any:
    async with http.get(f"{replica.sidecar_admin_url}/state") as response:
        return (await response.json())["flags"]["degraded-mode"]


async def test_a_fast_burn_switches_degraded_mode_on_and_recovery_switches_it_off(
    start_replicas: ReplicaFactory, harness: Harness, tmp_path: Path
) -> None:
    (replica,) = start_replicas(1, fast_slo_policy(tmp_path))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for cluster in CHAT_CLUSTERS:
            await harness.servers[cluster].set_fault(mode="fail", status=503)

        async def switched_on() -> bool:
            # Every hop fails: 503s, then the degradation ladder once the breakers open.
            assert await chat(http, replica) in (200, 503)
            return bool((await degraded_mode(http, replica))["on"])

        await wait_until(switched_on, timeout_s=20)
        change = (await degraded_mode(http, replica))["last_change"]
        assert (change["actor"], change["source"]) == ("slo/chat", "slo")
        assert "burning its error budget" in change["reason"]

        for cluster in CHAT_CLUSTERS:
            await harness.servers[cluster].clear_fault()

        async def switched_off() -> bool:
            await chat(http, replica)
            return not (await degraded_mode(http, replica))["on"]

        await wait_until(switched_off, timeout_s=30)
        assert "burn subsided" in (await degraded_mode(http, replica))["last_change"]["reason"]
