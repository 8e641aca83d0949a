"""Budgets and rate limits through the real Envoy, across sidecar replicas.

Two replicas, each with its own Envoy, serve one tenant. With a shared Redis they
enforce one budget between them; with the in-memory store each enforces its own. A
Redis killed mid-traffic fails no request, and what the replicas counted alone while
it was away reaches Redis once it is back.
"""

import asyncio
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sidecar.state.redis import RedisStore
from sidecar_demo.stack import ReplicaStack
from tests.conftest import DEMO_POLICY
from tests.e2e.replicas import ReplicaFactory
from tests.fakes.redis_server import RedisServer
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

BUDGET_TOKENS = 2000
MAX_TOKENS = 20


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def write_policy(directory: Path, budget_tokens: int, state: dict[str, Any], **budget: Any) -> Path:
    """The demo policy with (only) a daily token budget on demo-paid, and the given store."""
    policy = yaml.safe_load(DEMO_POLICY.read_text())
    policy["budgets"] = {
        "paid-daily": {
            "per": "tenant",
            "tenants": ["demo-paid"],
            "window": "day",
            "tokens": budget_tokens,
            **budget,
        }
    }
    policy["state"] = state
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def redis_state(server: RedisServer) -> dict[str, Any]:
    return {
        "store": "redis",
        "redis_url": server.url,
        "timeout_s": 0.2,
        "failures_to_local": 1,
        "retry_shared_after_s": 0.3,
    }


def budget_key() -> str:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    return f"budget:paid-daily:tenant:demo-paid:{today}:tokens"


async def chat(
    http: aiohttp.ClientSession, replica: ReplicaStack, model: str = "chat", job: str | None = None
) -> tuple[int, Any]:
    document = {
        "model": model,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": "Say something short"}],
    }
    headers = {"authorization": "Bearer sk-demo-paid"}
    if job is not None:
        headers["x-ai-job-id"] = job
    async with http.post(
        f"{replica.envoy_url}/v1/chat/completions", json=document, headers=headers
    ) as response:
        return response.status, await response.json(content_type=None)


async def spend_until_refused(
    http: aiohttp.ClientSession, replicas: list[ReplicaStack], clients: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """Send from ``clients`` concurrent clients, spread over the replicas, until every
    request of a round is refused (refused requests free their reservations, so a
    later, smaller round may still fit).

    Returns the tokens the answered requests used and the refusals' error bodies.
    """
    used = 0
    refusals: list[dict[str, Any]] = []
    turns = itertools.cycle(replicas)
    for _ in range(limit):
        batch = [chat(http, next(turns)) for _ in range(clients)]
        answers = await asyncio.gather(*batch)
        for status, body in answers:
            if status == 200:
                used += body["usage"]["total_tokens"]
            else:
                assert status == 429, body
                refusals.append(body)
        if all(status == 429 for status, _ in answers):
            break
    return used, refusals


async def test_replicas_sharing_redis_stop_at_one_budget(
    start_replicas: ReplicaFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, BUDGET_TOKENS, redis_state(redis_server))
    replicas = start_replicas(2, policy)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        used, refusals = await spend_until_refused(http, replicas, clients=4, limit=200)
        assert refusals, "the budget never ran out"
        # Admission reserves the prompt estimate plus max_tokens, more than a request
        # uses, so the fleet stops within the budget, a few requests short of it.
        assert BUDGET_TOKENS - 200 <= used <= BUDGET_TOKENS
        error = refusals[0]["error"]
        assert error["code"] == "budget_exceeded"
        assert "'paid-daily'" in error["message"]
        assert "tenant 'demo-paid'" in error["message"]
        assert "resets at" in error["message"]
    store = RedisStore(redis_server.url, "ai-sidecar")
    try:
        await wait_until(lambda: _settled_to(store, used))
    finally:
        await store.close()


async def _settled_to(store: RedisStore, expected: float) -> bool:
    usage = await store.read(budget_key())
    return usage.reserved == 0 and usage.used == expected


async def test_replicas_with_memory_stores_each_enforce_their_own_budget(
    start_replicas: ReplicaFactory, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, BUDGET_TOKENS, {"store": "memory"})
    replicas = start_replicas(2, policy)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        used, refusals = await spend_until_refused(http, replicas, clients=4, limit=200)
    assert refusals
    # Each replica let the tenant spend the whole budget: the fleet spent about twice.
    assert 2 * (BUDGET_TOKENS - 200) <= used <= 2 * BUDGET_TOKENS


async def test_killing_redis_mid_traffic_fails_nothing_and_accounting_catches_up(
    start_replicas: ReplicaFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, 10_000_000, redis_state(redis_server))
    replicas = start_replicas(2, policy)
    store = RedisStore(redis_server.url, "ai-sidecar")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def traffic(rounds: int) -> int:
            used = 0
            for _ in range(rounds):
                batch = [chat(http, replica) for replica in replicas for _ in range(2)]
                for status, body in await asyncio.gather(*batch):
                    assert status == 200, body
                    used += body["usage"]["total_tokens"]
            return used

        before = await traffic(3)
        await wait_until(lambda: _settled_to(store, before))
        redis_server.kill()
        during = await traffic(5)
        redis_server.restart()  # empty: the test server keeps nothing on disk
        after = await traffic(5)
        metrics = [await _store_metrics(http, replica) for replica in replicas]
    assert all(m["ai_sidecar_store_local_operations_total"] > 0 for m in metrics)
    try:
        # What the replicas counted alone while Redis was away, and everything after.
        await wait_until(lambda: _settled_to(store, during + after), timeout_s=15)
    finally:
        await store.close()


async def _store_metrics(http: aiohttp.ClientSession, replica: ReplicaStack) -> dict[str, float]:
    async with http.get(f"{replica.sidecar_admin_url}/metrics") as response:
        text = await response.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ai_sidecar_store_"):
            name, _, value = line.partition(" ")
            found[name] = float(value)
    return found


async def test_past_the_soft_limit_batch_work_moves_first_then_everything_downgrades(
    start_replicas: ReplicaFactory, tmp_path: Path
) -> None:
    policy = write_policy(
        tmp_path, 600, {"store": "memory"}, soft_limit_percent=40, when_exhausted="downgrade"
    )
    (replica,) = start_replicas(1, policy)
    models: list[tuple[str, str]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for _ in range(40):
            status, batch = await chat(http, replica, job="nightly-1")
            assert status == 200, batch
            status, interactive = await chat(http, replica)
            assert status == 200, interactive
            models.append((batch["model"], interactive["model"]))
            if interactive["model"] == "gpt-4o-mini":
                break
        # A route with nothing cheaper after its primary is refused once the budget is spent.
        status, refused = await chat(http, replica, model="premium")
        async with http.get(f"{replica.sidecar_admin_url}/metrics") as response:
            metrics = await response.text()
    # Interactive work stays on the primary (gpt-4o) while batch work already moved to
    # the cheaper fallback (gpt-4o-mini); once the budget is spent both are downgraded.
    assert models[0] == ("gpt-4o", "gpt-4o")
    assert ("gpt-4o-mini", "gpt-4o") in models
    assert models[-1] == ("gpt-4o-mini", "gpt-4o-mini")
    assert status == 429
    assert refused["error"]["code"] == "budget_exceeded"
    for event in ("soft_limit", "downgraded", "exhausted"):
        line = f'ai_sidecar_budget_events_total{{budget="paid-daily",event="{event}"}}'
        assert line in metrics
