"""Fixtures for the store contract: each test runs on every store, the same way.

:func:`harness` yields a :class:`Harness` for the in-memory store (time on a fake clock),
for the Redis store (a real ``redis-server``, time waited out for real), or for the
guarded store over a healthy Redis (which must behave exactly like the Redis store).
Tests make stores through it and let time pass through it, so one test body states the
contract for all of them.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from sidecar.core.clock import FakeClock
from sidecar.state import CounterStore, GuardedStore, MemoryStore, RedisStore
from tests.fakes.redis_server import RedisServer, RedisServerMissing

TIMEOUT_S = 0.5
"""The Redis store's per-call deadline in these tests."""


class Harness:
    """Makes stores of one kind and lets time pass for them."""

    kind = ""

    def __init__(self) -> None:
        self._stores: list[CounterStore] = []

    def store(self, namespace: str = "a", reservation_ttl_s: float = 60.0) -> CounterStore:
        store = self._make(namespace, reservation_ttl_s)
        self._stores.append(store)
        return store

    async def elapse(self, seconds: float) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        for store in self._stores:
            await store.close()

    def _make(self, namespace: str, reservation_ttl_s: float) -> CounterStore:
        raise NotImplementedError


class MemoryHarness(Harness):
    """Memory stores on one fake clock: elapsing time is instant."""

    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()

    async def elapse(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def _make(self, namespace: str, reservation_ttl_s: float) -> CounterStore:
        return MemoryStore(clock=self.clock.now, reservation_ttl_s=reservation_ttl_s)


class RedisHarness(Harness):
    """Redis stores on one server, in namespaces no other test uses."""

    kind = "redis"

    def __init__(self, server: RedisServer) -> None:
        super().__init__()
        self.server = server
        self.prefix = f"test-{uuid.uuid4().hex[:12]}"

    async def elapse(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def _make(self, namespace: str, reservation_ttl_s: float) -> CounterStore:
        return RedisStore(
            self.server.url,
            f"{self.prefix}-{namespace}",
            timeout_s=TIMEOUT_S,
            reservation_ttl_s=reservation_ttl_s,
        )


class GuardedHarness(RedisHarness):
    """Guarded stores over Redis stores, each with a local memory store of its own."""

    kind = "guarded"

    def _make(self, namespace: str, reservation_ttl_s: float) -> CounterStore:
        shared = super()._make(namespace, reservation_ttl_s)
        return GuardedStore(shared, MemoryStore(reservation_ttl_s=reservation_ttl_s))


def started_server() -> RedisServer:
    """A running ``redis-server``, or a test failure that says how to install it."""
    server = RedisServer()
    missing = ""
    try:
        server.start()
    except RedisServerMissing as error:
        missing = str(error)
    except BaseException:
        server.stop()
        raise
    if missing:
        server.stop()
        pytest.fail(missing, pytrace=False)
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the session's well-behaved tests."""
    server = started_server()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A server of the test's own, for tests that pause or kill it."""
    server = started_server()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis", "guarded"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    made: Harness
    if request.param == "memory":
        made = MemoryHarness()
    elif request.param == "redis":
        made = RedisHarness(request.getfixturevalue("redis_server"))
    else:
        made = GuardedHarness(request.getfixturevalue("redis_server"))
    yield made
    await made.aclose()
