"""What the Redis store does beyond the contract: its keys, TTLs and script loading."""

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from sidecar.state import RedisStore, Usage
from tests.contract.conftest import TIMEOUT_S
from tests.fakes.redis_server import RedisServer, RedisServerMissing


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    made = RedisStore(redis_server.url, "layout", timeout_s=TIMEOUT_S, reservation_ttl_s=30)
    yield made
    await made.close()


async def test_keys_are_namespaced_and_expire_with_their_window(
    store: RedisStore, raw: Redis
) -> None:
    held = await store.reserve("tenant:t1:day", 10, limit=100, ttl_s=600)
    await store.hit("tenant:t1:rpm", limit=60, window_s=60, now_s=1000.0)

    assert sorted(await raw.keys("layout:*")) == [
        "layout:tenant:t1:day",
        "layout:tenant:t1:day:holds",
        "layout:tenant:t1:rpm",
    ]
    assert 590 <= await raw.ttl("layout:tenant:t1:day") <= 600
    assert 590 <= await raw.ttl("layout:tenant:t1:day:holds") <= 600
    assert 0 < await raw.pttl("layout:tenant:t1:rpm") <= 1000
    hold_expiry = await raw.zscore("layout:tenant:t1:day:holds", f"h:{held.id}")
    assert hold_expiry is not None
    (seconds, micros) = await raw.time()
    assert hold_expiry - (seconds * 1000 + micros // 1000) == pytest.approx(30_000, abs=1000)


async def test_writes_renew_the_ttl(store: RedisStore, raw: Redis) -> None:
    await store.add("month", 1, ttl_s=100)
    await store.add("month", 1, ttl_s=5000)

    assert 4990 <= await raw.ttl("layout:month") <= 5000


async def test_scripts_are_loaded_again_after_a_flush(store: RedisStore, raw: Redis) -> None:
    await store.add("budget", 1, ttl_s=60)
    await raw.script_flush()

    held = await store.reserve("budget", 2, limit=10, ttl_s=60)
    await store.settle("budget", held.id or "", actual=2, ttl_s=60)

    assert await store.read("budget") == Usage(used=3, reserved=0)
    assert (await store.hit("rate", limit=1, window_s=60, now_s=1.0)).allowed


def test_a_missing_redis_server_says_how_to_install_it() -> None:
    server = RedisServer(binary="redis-server-that-is-not-installed")

    with pytest.raises(RedisServerMissing, match=r"`make test` installs it"):
        server.start()
