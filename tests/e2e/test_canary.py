"""Canary routing through the real Envoy: a share of paid chat goes to the dedicated
deployment, sticky per end user; when that canary fails, it is rolled back on its own
while the baseline keeps serving every request.
"""

from typing import Any

import pytest

from sidecar.core.canary import variant_of
from sidecar.domain.ids import ModelName, TierName
from sidecar_demo.stack import DEMO_CREDENTIALS
from tests.e2e.conftest import SIDECAR_ADMIN_URL, Harness
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

TOKEN = {"authorization": f"Bearer {DEMO_CREDENTIALS['AI_SIDECAR_ADMIN_TOKEN']}"}
ROUTE = (TierName("paid"), ModelName("chat"))


def users(variant: str, weight: float, count: int) -> list[str]:
    found = [f"user-{n}" for n in range(1000) if variant_of(ROUTE, f"user-{n}", weight) == variant]
    return found[:count]


async def ask(harness: Harness, user: str) -> tuple[int, str, str]:
    response = await harness.chat("sk-demo-paid", headers={"x-user-id": user})
    answer = await response.json()
    return response.status, answer.get("model", ""), response.headers.get("x-ai-sidecar-rung", "")


async def set_weight(harness: Harness, weight: float) -> Any:
    payload = {"weight_percent": weight, "actor": "release-bot", "reason": "canary trial"}
    async with harness.http.post(
        f"{SIDECAR_ADMIN_URL}/canaries/paid/chat", json=payload, headers=TOKEN
    ) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def canary_state(harness: Harness) -> dict[str, Any]:
    state: dict[str, Any] = (await harness.sidecar_state())["canaries"]["paid/chat"]
    return state


async def test_each_user_keeps_a_variant_and_a_failing_canary_rolls_back(
    fresh: Harness,
) -> None:
    (canary_user,) = users("canary", 50, 1)
    (baseline_user,) = users("baseline", 50, 1)
    assert await ask(fresh, canary_user) == (200, "gpt-4o", "primary"), "weight 0 at start"
    await set_weight(fresh, 50)
    for _ in range(3):
        assert await ask(fresh, canary_user) == (200, "gpt-4o-enterprise", "primary")
        assert await ask(fresh, baseline_user) == (200, "gpt-4o", "primary")

    await fresh.servers["enterprise-dedicated"].set_fault(mode="fail", status=503)
    for _ in range(40):
        status, _, _ = await ask(fresh, canary_user)
        assert status == 200, "the canary's failures are failed over, never the client's"
        assert (await ask(fresh, baseline_user))[0] == 200
        if "rolled_back" in await canary_state(fresh):
            break
    state = await canary_state(fresh)
    assert state["weight_percent"] == 0
    assert "error rate" in state["rolled_back"]["reason"]
    await fresh.servers["enterprise-dedicated"].clear_fault()
    assert await ask(fresh, canary_user) == (200, "gpt-4o", "primary")

    seen: list[str] = []

    async def counted() -> bool:
        async with fresh.http.get(f"{SIDECAR_ADMIN_URL}/metrics") as response:
            text = await response.text()
        seen[:] = [line for line in text.splitlines() if "canary" in line]
        return 'ai_sidecar_canary_rollbacks_total{model="chat",tier="paid"} 1.0' in text and (
            'ai_sidecar_variant_requests_total{model="chat",result="error",tier="paid",'
            'variant="canary"}' in text
        )

    try:
        await wait_until(counted)
    except TimeoutError:
        pytest.fail("metrics lack the rollback or the canary's errors: " + "\n".join(seen))


async def test_weights_need_the_token_and_a_known_route(harness: Harness) -> None:
    payload = {"weight_percent": 50, "actor": "a", "reason": "b"}
    async with harness.http.post(
        f"{SIDECAR_ADMIN_URL}/canaries/paid/chat", json=payload
    ) as response:
        assert response.status == 401
    async with harness.http.post(
        f"{SIDECAR_ADMIN_URL}/canaries/free/chat", json=payload, headers=TOKEN
    ) as response:
        assert response.status == 404
    bad = {"weight_percent": 150, "actor": "a", "reason": "b"}
    async with harness.http.post(
        f"{SIDECAR_ADMIN_URL}/canaries/paid/chat", json=bad, headers=TOKEN
    ) as response:
        assert response.status == 400
    assert (await canary_state(harness))["weight_percent"] == 0
