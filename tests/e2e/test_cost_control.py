"""Cost control through the real Envoy with the demo policy: the cost cache, rate-limit
and job-id errors, spend in the admin state and metrics.
"""

import pytest

from tests.e2e.conftest import ENVOY, SIDECAR_ADMIN_URL, Harness
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e


async def test_a_deterministic_request_is_answered_once_by_a_model_then_from_the_cache(
    fresh: Harness,
) -> None:
    prompt = {"temperature": 0, "messages": [{"role": "user", "content": "Capital of France?"}]}
    first = await fresh.chat("sk-demo-paid", **prompt)
    assert first.status == 200
    assert "x-ai-sidecar-cache" not in first.headers
    answer = await first.json()
    second = await fresh.chat("sk-demo-paid", **prompt)
    assert second.status == 200
    assert second.headers["x-ai-sidecar-cache"] == "hit"
    assert second.headers["x-ai-sidecar-rung"] == "cost_cache"
    assert await second.json() == answer
    assert len(await fresh.recorded("openai-premium")) == 1
    # Per tenant: another tenant of the same tier asks the model itself.
    other = await fresh.chat(None, headers={"authorization": "Bearer sk-demo-enterprise"}, **prompt)
    assert other.status == 200
    assert "x-ai-sidecar-cache" not in other.headers

    async def counted() -> bool:
        cache = (await fresh.sidecar_state())["cost_caches"]["chat"]
        return bool(cache["hits"] == 1 and cache["saved_usd"] > 0)

    await wait_until(counted)
    async with fresh.http.get(f"{SIDECAR_ADMIN_URL}/metrics") as response:
        metrics = await response.text()
    assert 'ai_sidecar_cost_cache_requests_total{model="chat",result="hit"} 1.0' in metrics
    assert "ai_sidecar_cost_cache_saved_usd_total" in metrics


async def test_sampled_and_streamed_requests_are_never_served_from_the_cache(
    fresh: Harness,
) -> None:
    for _ in range(2):
        sampled = await fresh.chat("sk-demo-paid", temperature=0.7)
        assert sampled.status == 200
        assert "x-ai-sidecar-cache" not in sampled.headers
        streamed = await fresh.chat("sk-demo-paid", temperature=0, stream=True)
        assert streamed.status == 200
        assert "x-ai-sidecar-cache" not in streamed.headers
        await streamed.read()
    assert len(await fresh.recorded("openai-premium")) == 4


async def test_a_bad_job_id_is_a_clear_400(harness: Harness) -> None:
    response = await harness.chat("sk-demo-paid", headers={"x-ai-job-id": "no spaces allowed"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "invalid_job_id"
    assert "x-ai-job-id" in error["message"]


async def test_spend_shows_per_tenant_team_and_job_budget(fresh: Harness) -> None:
    response = await fresh.chat("sk-demo-paid", headers={"x-ai-job-id": "nightly-42"})
    assert response.status == 200
    usage = (await response.json())["usage"]

    async def settled() -> bool:
        accounting = (await fresh.sidecar_state())["accounting"]
        jobs = accounting["budgets"]["batch-jobs"]["counts"]
        job = jobs.get("demo-paid/nightly-42", {}).get("tokens", {})
        return job.get("used") == usage["total_tokens"] and job.get("reserved") == 0

    await wait_until(settled)
    accounting = (await fresh.sidecar_state())["accounting"]
    team = accounting["spend_since_start"]["teams"]["payments"]
    assert team["tokens"] == usage["total_tokens"]
    assert team["usd"] > 0
    async with fresh.http.get(f"{SIDECAR_ADMIN_URL}/metrics") as metrics_response:
        metrics = await metrics_response.text()
    assert 'ai_sidecar_tenant_spend_usd_total{team="payments",tenant="demo-paid"}' in metrics


async def test_a_request_over_the_tokens_per_minute_limit_says_how_to_fix_it(
    harness: Harness,
) -> None:
    document = {
        "model": "chat",
        "max_tokens": 5_000_000,
        "messages": [{"role": "user", "content": "Write a very long story"}],
    }
    async with harness.http.post(
        f"{ENVOY}/v1/chat/completions",
        json=document,
        headers={"authorization": "Bearer sk-demo-free"},
    ) as response:
        assert response.status == 429
        error = (await response.json())["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "2000000 tokens per minute" in error["message"]
    assert "lower max_tokens" in error["message"]
