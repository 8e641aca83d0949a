"""The guarded store over a real Redis that is killed, restarted, or frozen mid-traffic.

Traffic is reservations settled by several workers at once. Whatever Redis does, no
call raises, and once Redis is back and the guard has reconciled, Redis holds exactly the
sum of the settled amounts: what was counted locally was shared, nothing twice.
"""

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from sidecar.state import GuardedStore, MemoryStore, RedisStore
from tests.contract.conftest import TIMEOUT_S
from tests.fakes.redis_server import RedisServer

TTL = 3600
LIMIT = 1e9
WORKERS = 8
FAST_TIMEOUT_S = 0.2
"""The Redis store's deadline while Redis is frozen: each of the first calls waits it out."""
IN_FLIGHT_S = 0.01
"""How long a request holds its reservation: most workers hold one when Redis goes."""


class Traffic:
    """Workers that reserve, then settle, until stopped; they record what they settled."""

    def __init__(self, store: GuardedStore, key: str = "budget") -> None:
        self.store = store
        self.key = key
        self.settled: list[float] = []
        self._amounts = itertools.cycle([1.0, 2.0, 3.0, 5.0, 8.0])
        self._stop = asyncio.Event()
        self._progress = asyncio.Condition()
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(IN_FLIGHT_S * (1 + index / WORKERS)))
            for index in range(WORKERS)
        ]

    async def run_for(self, settles: int) -> None:
        """Wait until ``settles`` more reservations were settled."""
        target = len(self.settled) + settles
        async with self._progress:
            await self._progress.wait_for(lambda: len(self.settled) >= target)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._workers)

    async def _work(self, in_flight_s: float) -> None:
        while not self._stop.is_set():
            estimate = next(self._amounts)
            held = await self.store.reserve(self.key, estimate, limit=LIMIT, ttl_s=TTL)
            assert held.granted
            assert held.id is not None
            await asyncio.sleep(in_flight_s)
            actual = estimate - 0.5
            await self.store.settle(self.key, held.id, actual, ttl_s=TTL)
            self.settled.append(actual)
            async with self._progress:
                self._progress.notify_all()


@pytest.fixture
async def observer(own_redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """A plain Redis store on the same namespace, to read what Redis really holds."""
    store = RedisStore(own_redis_server.url, "guarded", timeout_s=TIMEOUT_S)
    yield store
    await store.close()


def guarded(server: RedisServer, timeout_s: float = TIMEOUT_S) -> GuardedStore:
    shared = RedisStore(server.url, "guarded", timeout_s=timeout_s)
    return GuardedStore(shared, MemoryStore(), fail_max=3, reset_timeout_s=60)


async def catch_up(store: GuardedStore) -> None:
    """Let the guard try Redis again now, and share everything it counted locally."""
    store.probe()
    await store.read("budget")
    assert await store.reconcile()
    snapshot = store.snapshot()
    assert (snapshot["breaker"], snapshot["pending_settles"], snapshot["pending_keys"]) == (
        "closed",
        0,
        0,
    )


async def test_traffic_through_a_redis_kill_and_restart_is_all_accounted(
    own_redis_server: RedisServer, observer: RedisStore
) -> None:
    store = guarded(own_redis_server)
    try:
        held = [await store.reserve("budget", 10, limit=LIMIT, ttl_s=TTL) for _ in range(5)]
        traffic = Traffic(store)

        own_redis_server.kill()
        traffic.start()
        for answer in held:
            await store.settle("budget", answer.id or "", actual=9, ttl_s=TTL)
        await traffic.run_for(200)
        assert store.snapshot()["breaker"] == "open"
        own_redis_server.restart()
        await traffic.run_for(50)
        store.probe()
        await traffic.run_for(200)
        await traffic.stop()
        await catch_up(store)

        snapshot = store.snapshot()
        assert snapshot["local_operations"] > 0
        assert snapshot["shared_failures"] >= 3
        assert snapshot["reconciled"] > 0
        assert snapshot["dropped"] == 0
        used = (await observer.read("budget")).used
        assert used == pytest.approx(9 * len(held) + sum(traffic.settled))
    finally:
        await store.close()


async def test_traffic_through_a_frozen_redis_is_all_accounted_once(
    own_redis_server: RedisServer, observer: RedisStore
) -> None:
    store = guarded(own_redis_server, timeout_s=FAST_TIMEOUT_S)
    try:
        traffic = Traffic(store)
        traffic.start()
        await traffic.run_for(100)
        await asyncio.sleep(IN_FLIGHT_S / 2)

        own_redis_server.pause()
        await traffic.run_for(200)
        assert store.snapshot()["breaker"] == "open"
        own_redis_server.resume()
        await traffic.stop()
        await catch_up(store)

        assert store.snapshot()["shared_failures"] >= 3
        assert store.snapshot()["reconciled"] > 0
        assert (await observer.read("budget")).used == pytest.approx(sum(traffic.settled))
    finally:
        await store.close()


async def test_a_budget_is_enforced_locally_from_the_last_shared_view(
    own_redis_server: RedisServer, observer: RedisStore
) -> None:
    store = guarded(own_redis_server)
    try:
        first = await store.reserve("budget", 60, limit=100, ttl_s=TTL)
        await store.settle("budget", first.id or "", actual=60, ttl_s=TTL)
        await store.read("budget")

        own_redis_server.pause()
        answers = [await store.reserve("budget", 10, limit=100, ttl_s=TTL) for _ in range(6)]
        granted = [answer for answer in answers if answer.granted]
        for answer in granted:
            await store.settle("budget", answer.id or "", actual=10, ttl_s=TTL)
        own_redis_server.resume()
        await catch_up(store)

        assert len(granted) == 4
        assert (await observer.read("budget")).used == 100
    finally:
        await store.close()
