"""Failover inside one client request, through the real Envoy.

The paid tier's chat chain is openai-premium -> openai-cheap -> ollama-local. When the
chosen cluster fails before answering, Envoy retries the same request on the next
cluster of the chain (aggregate cluster ``chain--...``), and the sidecar's upstream
filter rewrites every attempt for its cluster. Each test restarts the sidecar when it
ends, so breaker state never leaks into the next test.
"""

import asyncio
import json
from typing import Any

import pytest

from sidecar.core.chains import failover_chains
from sidecar.policy.loader import load_policy
from tests.conftest import DEMO_POLICY
from tests.e2e.conftest import ENVOY_ADMIN_URL, Harness
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

PAID_CHAIN = ("openai-premium", "openai-cheap", "ollama-local")
PAID_AGGREGATE = "chain--" + "--".join(PAID_CHAIN)
UPSTREAM_KEY = "Bearer sk-upstream-openai-demo"


async def sidecar_clusters(harness: Harness) -> dict[str, Any]:
    clusters: dict[str, Any] = (await harness.sidecar_state())["clusters"]
    return clusters


async def breaker_windows(harness: Harness) -> dict[str, tuple[int, int]]:
    """Calls and failures in each cluster's breaker window."""
    return {
        name: (c["window_calls"], round(c["window_calls"] * c["failure_rate"]))
        for name, c in (await sidecar_clusters(harness)).items()
    }


async def _window_is(harness: Harness, cluster: str, expected: tuple[int, int]) -> bool:
    return (await breaker_windows(harness))[cluster] == expected


async def envoy_counter(harness: Harness, name: str) -> int:
    async with harness.http.get(f"{ENVOY_ADMIN_URL}/stats?filter=^{name}$&format=json") as r:
        stats = (await r.json())["stats"]
    return int(stats[0]["value"]) if stats else 0


@pytest.mark.parametrize(
    "fault",
    [
        {"mode": "fail", "status": 503},
        {"mode": "fail", "status": 500},
        {"mode": "fail", "status": 429},
        {"mode": "reset"},
    ],
    ids=["503", "500", "429", "reset"],
)
async def test_a_failing_primary_is_retried_on_the_next_hop_in_the_same_request(
    fresh: Harness, fault: dict[str, Any]
) -> None:
    before = await breaker_windows(fresh)
    await fresh.servers["openai-premium"].set_fault(**fault)
    identity = {"x-api-key": "sk-demo-paid", "cookie": "session=1"}
    async with await fresh.chat("sk-demo-paid", headers=identity) as response:
        assert response.status == 200
        assert response.headers["x-ai-sidecar-rung"] == "fallback"
        answer = await response.json()
    assert answer["model"] == "gpt-4o-mini"

    (tried,) = await fresh.recorded("openai-premium")
    assert tried["json"]["model"] == "gpt-4o"
    (served,) = await fresh.recorded("openai-cheap")
    assert served["json"]["model"] == "gpt-4o-mini", "the body is rewritten for this hop"
    assert served["json"]["messages"] == [{"role": "user", "content": "Hello"}]
    assert served["headers"]["authorization"] == UPSTREAM_KEY
    assert int(served["headers"]["content-length"]) == served["body_bytes"]
    assert not {"x-ai-sidecar-cluster", "x-envoy-max-retries", "x-api-key", "cookie"} & set(
        served["headers"]
    )
    assert "sk-demo-paid" not in json.dumps([tried, served]), "the tenant's key stays home"
    assert await fresh.recorded("ollama-local") == []

    # Each attempt fed its own cluster's breaker: one failure for premium, one success
    # for cheap (the reset is judged when the request gets its answer).
    async def attempts_counted() -> bool:
        return await breaker_windows(fresh) == {
            **before,
            "openai-premium": (before["openai-premium"][0] + 1, before["openai-premium"][1] + 1),
            "openai-cheap": (before["openai-cheap"][0] + 1, before["openai-cheap"][1]),
        }

    await wait_until(attempts_counted)
    assert all(c["in_flight"] == 0 for c in (await sidecar_clusters(fresh)).values())


async def test_a_streamed_request_fails_over_before_its_first_event(fresh: Harness) -> None:
    await fresh.servers["openai-premium"].set_fault(mode="fail", status=503)
    async with await fresh.chat("sk-demo-paid", stream=True) as response:
        assert response.status == 200
        assert response.headers["x-ai-sidecar-rung"] == "fallback"
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line async for line in response.content if line.startswith(b"data: {")]
    assert {json.loads(event[6:])["model"] for event in events} == {"gpt-4o-mini"}


async def test_the_last_hop_gets_the_ollama_model_and_no_credential(fresh: Harness) -> None:
    for name in PAID_CHAIN[:2]:
        await fresh.servers[name].set_fault(mode="fail", status=503)
    async with await fresh.chat("sk-demo-paid") as response:
        assert response.status == 200
        assert response.headers["x-ai-sidecar-rung"] == "fallback"
        assert (await response.json())["model"] == "llama3.2"
    (served,) = await fresh.recorded("ollama-local")
    assert served["json"]["model"] == "llama3.2"
    assert "authorization" not in served["headers"], "header changes of earlier hops are undone"


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"mode": "fail", "status": 503}, 503, None),
        ({"mode": "reset"}, 503, "upstream_reset_before_response_started"),
    ],
    ids=["503", "reset"],
)
async def test_when_every_hop_fails_the_client_gets_a_clear_error_after_one_try_each(
    fresh: Harness, fault: dict[str, Any], status: int, code: str | None
) -> None:
    for name in PAID_CHAIN:
        await fresh.servers[name].set_fault(**fault)
    # A client asking Envoy for more retries is ignored: no hop is tried twice.
    more = {"x-envoy-max-retries": "10", "x-envoy-retry-on": "5xx"}
    async with await fresh.chat("sk-demo-paid", headers=more) as response:
        assert response.status == status
        error = (await response.json())["error"]
    assert error["type"] == "server_error"
    assert error["message"]
    if code is not None:
        assert error["code"].startswith(code)
    for name in PAID_CHAIN:
        assert len(await fresh.recorded(name)) == 1, f"{name} is tried exactly once"


async def test_a_client_error_from_the_primary_is_not_retried(fresh: Harness) -> None:
    calls, failures = (await breaker_windows(fresh))["openai-premium"]
    await fresh.servers["openai-premium"].set_fault(mode="fail", status=400)
    async with await fresh.chat("sk-demo-paid") as response:
        assert response.status == 400
        assert response.headers["x-ai-sidecar-rung"] == "primary"
    assert len(await fresh.recorded("openai-premium")) == 1
    assert await fresh.recorded("openai-cheap") == []
    await wait_until(
        lambda: _window_is(fresh, "openai-premium", (calls + 1, failures)),
    )


async def test_a_single_remaining_hop_is_not_retried(fresh: Harness) -> None:
    await fresh.servers["ollama-local"].set_fault(mode="fail", status=503)
    async with await fresh.chat("sk-demo-paid", model="local") as response:
        assert response.status == 503
    assert len(await fresh.recorded("ollama-local")) == 1


async def test_every_aggregate_has_a_retry_budget_that_bounds_the_retries(
    fresh: Harness,
) -> None:
    url = f"{ENVOY_ADMIN_URL}/config_dump?resource=static_clusters&name_regex=chain--.*"
    async with fresh.http.get(url) as response:
        clusters = [entry["cluster"] for entry in (await response.json())["configs"]]
    assert len(clusters) == len(failover_chains(load_policy(DEMO_POLICY)))
    for cluster in clusters:
        (threshold,) = cluster["circuit_breakers"]["thresholds"]
        assert threshold["retry_budget"] == {
            "budget_percent": {"value": 20},
            "min_retry_concurrency": 10,
        }, cluster["name"]

    # Ten retries may be under way at once (min_retry_concurrency): with the primary
    # resetting connections (outcomes the breaker judges only once each request is
    # answered) and the next hop holding its retries, an eleventh request is not retried.
    premium, cheap = fresh.servers["openai-premium"], fresh.servers["openai-cheap"]
    overflow = f"cluster.{PAID_AGGREGATE}.upstream_rq_retry_overflow"
    before = await envoy_counter(fresh, overflow)
    await premium.set_fault(mode="reset")
    await cheap.set_fault(mode="stall")
    held = [asyncio.create_task(_status(fresh, n)) for n in range(10)]
    await cheap.wait_for_stalled(10)
    assert await _status(fresh, 10) == 503, "over the budget: the primary's failure"
    assert await envoy_counter(fresh, overflow) == before + 1
    await cheap.clear_fault()
    assert await asyncio.gather(*held) == [200] * 10


async def _status(harness: Harness, n: int) -> int:
    document = {"model": "chat", "messages": [{"role": "user", "content": f"budget {n}"}]}
    headers = {"authorization": "Bearer sk-demo-paid"}
    url = "http://127.0.0.1:10000/v1/chat/completions"
    async with harness.http.post(url, json=document, headers=headers) as response:
        await response.read()
        return response.status
