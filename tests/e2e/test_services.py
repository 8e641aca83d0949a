"""A chain that is not a chat model: a fraud-scoring service behind /services/fraud/score.

Fraud model, then rule engine, then the last score for the same user and merchant
(the cache key is the body's user_id and merchant_id), then the manual-review queue.
"""

from typing import Any

import pytest

from tests.e2e.conftest import ENVOY, Harness

pytestmark = pytest.mark.e2e

PAID = {"authorization": "Bearer sk-demo-paid"}


async def score(harness: Harness, user: str, merchant: str, amount: float) -> tuple[int, Any, Any]:
    payment = {"user_id": user, "merchant_id": merchant, "amount": amount}
    async with harness.http.post(
        f"{ENVOY}/services/fraud/score", json=payment, headers=PAID
    ) as response:
        return response.status, response.headers, await response.json()


async def breakers_open(harness: Harness, *clusters: str) -> bool:
    state = (await harness.sidecar_state())["clusters"]
    return all(state[name]["breaker"] == "open" for name in clusters)


async def test_the_service_gets_the_request_as_sent_and_falls_over_to_the_rule_engine(
    fresh: Harness,
) -> None:
    status, headers, answer = await score(fresh, "u1", "m1", 120.0)
    assert (status, answer["server"], headers["x-ai-sidecar-rung"]) == (
        200,
        "fraud-model",
        "primary",
    )
    (seen,) = await fresh.recorded("fraud-model")
    assert seen["path"] == "/services/fraud/score"
    assert seen["json"] == {"user_id": "u1", "merchant_id": "m1", "amount": 120.0}
    assert "authorization" not in seen["headers"], "the tenant's key stays inside"

    await fresh.servers["fraud-model"].set_fault(mode="fail", status=503)
    status, headers, answer = await score(fresh, "u1", "m1", 80.0)
    assert (status, answer["server"], headers["x-ai-sidecar-rung"]) == (
        200,
        "rules-engine",
        "fallback",
    )


async def test_with_both_down_the_last_score_then_manual_review(fresh: Harness) -> None:
    first = await score(fresh, "u2", "m9", 50.0)
    assert first[0] == 200
    for name in ("fraud-model", "rules-engine"):
        await fresh.servers[name].set_fault(mode="fail", status=503)
    for n in range(12):
        await score(fresh, f"trip-{n}", "m0", 1.0)
        if await breakers_open(fresh, "fraud-model", "rules-engine"):
            break
    status, headers, cached = await score(fresh, "u2", "m9", 999.0)
    assert (status, headers["x-ai-sidecar-rung"]) == (200, "cache")
    assert cached == first[2], "the last score for this user and merchant, whatever the amount"
    status, headers, queued = await score(fresh, "u3", "m9", 10.0)
    assert (status, headers["x-ai-sidecar-rung"], queued["status"]) == (202, "queued", "queued")


async def test_an_unknown_service_path_is_refused_not_passed_on(harness: Harness) -> None:
    async with harness.http.post(
        f"{ENVOY}/services/nothing/here", json={}, headers=PAID
    ) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "unknown_endpoint"
