"""Chaos through the real Envoy: breakers, bulkhead pools, shedding and the ladder.

Faults are injected with the demo servers' controls. Each test restarts the sidecar
when it ends, so breaker and pool state never leaks into the next test.
"""

import asyncio
from typing import Any

import pytest

from tests.e2e.conftest import SIDECAR_ADMIN_URL, Harness
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

QUESTION = "What is the capital of France?"


async def breaker(harness: Harness, cluster: str) -> str:
    clusters = (await harness.sidecar_state())["clusters"]
    return str(clusters[cluster]["breaker"])


async def ask(
    harness: Harness, key: str, content: str = QUESTION, **extra: Any
) -> tuple[int, Any, Any]:
    headers = {"authorization": f"Bearer {key}", **extra.pop("headers", {})}
    document = {
        "model": extra.pop("model", "chat"),
        "messages": [{"role": "user", "content": content}],
        **extra,
    }
    async with harness.http.post(
        "http://127.0.0.1:10000/v1/chat/completions", json=document, headers=headers
    ) as response:
        return response.status, response.headers, await response.json()


async def test_a_failing_primary_trips_its_breaker_and_traffic_moves_then_returns(
    fresh: Harness,
) -> None:
    premium = fresh.servers["openai-premium"]
    await premium.set_fault(mode="fail", status=503)
    for _ in range(10):
        await ask(fresh, "sk-demo-paid")
        if await breaker(fresh, "openai-premium") == "open":
            break
    assert await breaker(fresh, "openai-premium") == "open"
    reason = (await fresh.sidecar_state())["clusters"]["openai-premium"]["reason"]
    assert reason.startswith("failure rate")
    assert ">= 50% over" in reason

    await premium.clear_recorded()
    status, headers, answer = await ask(fresh, "sk-demo-paid")
    assert (status, answer["model"]) == (200, "gpt-4o-mini"), "served by the next hop"
    assert headers["x-ai-sidecar-rung"] == "fallback"
    assert await premium.recorded_requests() == [], "an open breaker keeps traffic away"

    await premium.clear_fault()
    await wait_until(lambda: _breaker_not_open(fresh, "openai-premium"), timeout_s=10)
    models = [(await ask(fresh, "sk-demo-paid"))[2]["model"] for _ in range(4)]
    assert models[-1] == "gpt-4o", "after the trial calls succeed the primary serves again"
    assert await breaker(fresh, "openai-premium") == "closed"
    transitions = [
        (t["from"], t["to"]) for t in (await fresh.sidecar_state())["recent_transitions"]
    ]
    assert transitions[-3:] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def _breaker_not_open(harness: Harness, cluster: str) -> bool:
    clusters = (await harness.sidecar_state())["clusters"]
    return bool(clusters[cluster]["open_for_s"] == 0)


async def test_a_free_tier_flood_leaves_the_paid_tier_alone(fresh: Harness) -> None:
    await fresh.servers["openai-cheap"].set_fault(latency_ms=300)
    flood = [ask(fresh, "sk-demo-free", content=f"flood {n}") for n in range(40)]
    paid = [ask(fresh, "sk-demo-paid", content=f"paid {n}") for n in range(10)]
    results = await asyncio.gather(*flood, *paid)
    free_results, paid_results = results[:40], results[40:]
    assert [status for status, _, _ in paid_results] == [200] * 10
    shed = [(headers, body) for status, headers, body in free_results if status != 200]
    assert shed, "ten times the free pool cannot all be served at once"
    for headers, body in shed:
        assert headers["retry-after"] == "2"
        assert body["error"]["code"] in {"overloaded", "too_many_requests"}
    assert (await fresh.sidecar_state())["pools"]["free"]["shed"] == len(shed)


async def test_micro_transactions_are_shed_first_while_others_wait(fresh: Harness) -> None:
    cheap = fresh.servers["openai-cheap"]
    await cheap.set_fault(mode="stall")
    holders = [
        asyncio.create_task(ask(fresh, "sk-demo-free", content=f"hold {n}")) for n in range(4)
    ]
    await cheap.wait_for_stalled(4)
    micro = await ask(fresh, "sk-demo-free", headers={"x-transaction-amount": "0.5"})
    assert micro[0] == 503
    assert "pool 'free' is full" in micro[2]["error"]["message"]
    waiting = asyncio.create_task(ask(fresh, "sk-demo-free", content="normal"))
    await wait_until(lambda: _pool_waiting(fresh, "free", 1))
    await cheap.clear_fault()
    results = await asyncio.gather(*holders, waiting)
    assert [status for status, _, _ in results] == [200] * 5, "the normal request waited its turn"


async def _pool_waiting(harness: Harness, pool: str, count: int) -> bool:
    return bool((await harness.sidecar_state())["pools"][pool]["waiting"] == count)


async def test_with_every_hop_down_cached_then_degraded_answers_are_served(
    fresh: Harness,
) -> None:
    status, _, first = await ask(fresh, "sk-demo-free")
    assert status == 200
    for name in ("openai-cheap", "ollama-local"):
        await fresh.servers[name].set_fault(mode="fail", status=503)
    for _ in range(12):
        await ask(fresh, "sk-demo-free", content="trip")
        if {await breaker(fresh, "openai-cheap"), await breaker(fresh, "ollama-local")} == {"open"}:
            break
    status, headers, cached = await ask(fresh, "sk-demo-free")
    assert (status, headers["x-ai-sidecar-rung"]) == (200, "cache")
    assert cached["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    status, headers, degraded = await ask(fresh, "sk-demo-free", content="never asked before")
    assert (status, headers["x-ai-sidecar-rung"]) == (200, "degraded")
    assert "briefly unavailable" in degraded["choices"][0]["message"]["content"]


async def test_a_model_with_a_queue_parks_requests_when_nothing_can_answer(
    fresh: Harness,
) -> None:
    await fresh.servers["openai-premium"].set_fault(mode="fail", status=503)
    for _ in range(10):
        await ask(fresh, "sk-demo-paid", model="premium")
        if await breaker(fresh, "openai-premium") == "open":
            break
    status, headers, body = await ask(fresh, "sk-demo-paid", model="premium")
    assert (status, headers["x-ai-sidecar-rung"], body["status"]) == (202, "queued", "queued")
    assert (await fresh.sidecar_state())["degraded_queues"]["premium"]["queued"] == 1

    drain_url = f"{SIDECAR_ADMIN_URL}/queues/premium/drain?limit=10"
    async with fresh.http.post(drain_url) as refused:
        assert refused.status == 401, "draining needs the admin token"
    token = {"authorization": "Bearer demo-admin-token"}
    async with fresh.http.post(drain_url, headers=token) as drained:
        parked = (await drained.json())["requests"]
    assert [(p["id"], p["tenant"], p["body"]["model"]) for p in parked] == [
        (body["id"], "demo-paid", "premium")
    ]
    assert (await fresh.sidecar_state())["degraded_queues"]["premium"]["queued"] == 0


async def test_a_chaos_drill_through_envoys_runtime_trips_breakers_then_ends(
    fresh: Harness,
) -> None:
    await fresh.set_runtime("ai_sidecar.chaos.abort_percent", "100")
    try:
        statuses = []
        for _ in range(20):
            statuses.append((await ask(fresh, "sk-demo-free", content="drill"))[0])
            if {await breaker(fresh, "openai-cheap"), await breaker(fresh, "ollama-local")} == {
                "open"
            }:
                break
        assert set(statuses) == {503}, "injected aborts reach the client until breakers open"
        status, headers, body = await ask(fresh, "sk-demo-free", content="during the drill")
        assert (status, headers["x-ai-sidecar-rung"]) == (200, "degraded")
        assert "briefly unavailable" in body["choices"][0]["message"]["content"]
    finally:
        await fresh.set_runtime("ai_sidecar.chaos.abort_percent", "")
    async with fresh.http.post("http://127.0.0.1:10000/upload", data=b"x") as response:
        assert response.status == 200, "the drill never touched non-AI traffic"


async def test_no_client_error_while_any_hop_lives_under_a_steady_stream(
    fresh: Harness,
) -> None:
    premium = fresh.servers["openai-premium"]
    models: list[str] = []
    statuses: list[int] = []

    async def client(count: int) -> None:
        for n in range(count):
            status, _, answer = await ask(fresh, "sk-demo-paid", content=f"steady {n}")
            statuses.append(status)
            models.append(answer.get("model", "") if status == 200 else "")

    async def faults() -> None:
        await wait_until(lambda: len(statuses) >= 20)
        await premium.set_fault(mode="fail", status=503)
        await wait_until(lambda: len(statuses) >= 50)
        await premium.set_fault(mode="reset")
        await wait_until(lambda: len(statuses) >= 80)
        await fresh.servers["openai-cheap"].set_fault(mode="fail", status=500)

    await asyncio.gather(*(client(30) for _ in range(4)), faults())
    assert statuses == [200] * 120, "every client request got a good answer"
    assert models[0] == "gpt-4o", "the primary served before the faults"
    assert set(models[60:]) <= {"gpt-4o-mini", "llama3.2"}, "the next live hops served after"
    assert "llama3.2" in models[90:], "with two hops down the last one answers"
