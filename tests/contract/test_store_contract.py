"""The counter-store contract, held by the in-memory, Redis and guarded stores alike.

Every test taking ``harness`` runs once per store. The outage tests at the end concern
Redis only: the memory store has nothing to lose.
"""

import asyncio
import math
import time

import pytest
from redis.asyncio import Redis

from sidecar.state import KeyKindError, RedisStore, StoreUnavailable, Usage
from tests.contract.conftest import TIMEOUT_S, Harness
from tests.fakes.redis_server import RedisServer, free_port

TTL = 3600
DEADLINE_SLACK_S = 0.5
"""How much later than the store's deadline a failing call may return, on a slow box."""


# -- reserve ---------------------------------------------------------------------------


async def test_reserve_within_limit_holds_the_amount(harness: Harness) -> None:
    store = harness.store()

    first = await store.reserve("budget", 30, limit=100, ttl_s=TTL)
    second = await store.reserve("budget", 70, limit=100, ttl_s=TTL)

    assert first.granted
    assert first.id is not None
    assert (first.used, first.reserved) == (0, 30)
    assert second.granted
    assert second.id not in (None, first.id)
    assert (second.used, second.reserved) == (0, 100)
    assert await store.read("budget") == Usage(used=0, reserved=100)


async def test_reserve_over_limit_is_refused_and_changes_nothing(harness: Harness) -> None:
    store = harness.store()
    await store.add("budget", 150, ttl_s=TTL)
    await store.reserve("budget", 30, limit=200, ttl_s=TTL)

    refused = await store.reserve("budget", 21, limit=200, ttl_s=TTL)

    assert not refused.granted
    assert refused.id is None
    assert (refused.used, refused.reserved) == (150, 30)
    assert await store.read("budget") == Usage(used=150, reserved=30)
    assert (await store.reserve("budget", 20, limit=200, ttl_s=TTL)).granted


async def test_reserve_on_a_new_key_over_limit_is_refused(harness: Harness) -> None:
    store = harness.store()

    refused = await store.reserve("budget", 5, limit=4, ttl_s=TTL)

    assert (refused.granted, refused.used, refused.reserved, refused.id) == (False, 0, 0, None)
    assert await store.read("budget") == Usage(used=0, reserved=0)


async def test_float_amounts_fit_a_limit_they_add_up_to(harness: Harness) -> None:
    store = harness.store()
    await store.add("spend", 0.1, ttl_s=TTL)

    granted = await store.reserve("spend", 0.2, limit=0.3, ttl_s=TTL)

    assert granted.granted
    assert granted.reserved == pytest.approx(0.2)


async def test_an_infinite_limit_grants_everything(harness: Harness) -> None:
    store = harness.store()
    await store.add("budget", 1e12, ttl_s=TTL)

    granted = await store.reserve("budget", 1e9, limit=math.inf, ttl_s=TTL)

    assert granted.granted
    assert await store.read("budget") == Usage(used=1e12, reserved=1e9)


# -- settle ----------------------------------------------------------------------------


async def test_settle_replaces_the_reservation_by_the_actual_amount(harness: Harness) -> None:
    store = harness.store()
    kept = await store.reserve("budget", 40, limit=100, ttl_s=TTL)
    settled = await store.reserve("budget", 50, limit=100, ttl_s=TTL)
    assert settled.id is not None

    await store.settle("budget", settled.id, actual=35, ttl_s=TTL)

    assert await store.read("budget") == Usage(used=35, reserved=40)
    assert kept.granted
    refused = await store.reserve("budget", 26, limit=100, ttl_s=TTL)
    assert not refused.granted
    assert (await store.reserve("budget", 25, limit=100, ttl_s=TTL)).granted


async def test_settling_zero_cancels_and_frees_the_room(harness: Harness) -> None:
    store = harness.store()
    held = await store.reserve("budget", 100, limit=100, ttl_s=TTL)
    assert held.id is not None
    assert not (await store.reserve("budget", 1, limit=100, ttl_s=TTL)).granted

    await store.settle("budget", held.id, actual=0, ttl_s=TTL)

    assert await store.read("budget") == Usage(used=0, reserved=0)
    assert (await store.reserve("budget", 100, limit=100, ttl_s=TTL)).granted


async def test_settling_twice_changes_nothing(harness: Harness) -> None:
    store = harness.store()
    held = await store.reserve("budget", 10, limit=100, ttl_s=TTL)
    assert held.id is not None

    await store.settle("budget", held.id, actual=12, ttl_s=TTL)
    await store.settle("budget", held.id, actual=12, ttl_s=TTL)
    await store.settle("budget", held.id, actual=99, ttl_s=TTL)

    assert await store.read("budget") == Usage(used=12, reserved=0)


async def test_settling_an_unknown_id_still_counts_the_usage_once(harness: Harness) -> None:
    store = harness.store()
    await store.reserve("budget", 10, limit=100, ttl_s=TTL)

    await store.settle("budget", "never-reserved", actual=7, ttl_s=TTL)
    await store.settle("budget", "never-reserved", actual=7, ttl_s=TTL)

    assert await store.read("budget") == Usage(used=7, reserved=10)


async def test_float_drift_does_not_outlive_the_reservations(harness: Harness) -> None:
    store = harness.store()
    held = [await store.reserve("spend", 0.1, limit=1, ttl_s=TTL) for _ in range(10)]
    assert all(answer.granted for answer in held)

    for answer in held:
        await store.settle("spend", answer.id or "", actual=0, ttl_s=TTL)

    assert await store.read("spend") == Usage(used=0, reserved=0)


# -- add and read ----------------------------------------------------------------------


async def test_add_increments_used_and_returns_it(harness: Harness) -> None:
    store = harness.store()

    assert await store.add("tokens", 2.5, ttl_s=TTL) == 2.5
    assert await store.add("tokens", 1, ttl_s=TTL) == 3.5
    assert await store.add("tokens", 0, ttl_s=TTL) == 3.5
    assert await store.read("tokens") == Usage(used=3.5, reserved=0)


async def test_reading_a_key_never_written_gives_zeros(harness: Harness) -> None:
    store = harness.store()

    assert await store.read("nothing-here") == Usage(used=0, reserved=0)


async def test_keys_are_independent(harness: Harness) -> None:
    store = harness.store()
    await store.add("tenant:a", 5, ttl_s=TTL)
    await store.reserve("tenant:b", 3, limit=10, ttl_s=TTL)

    assert await store.read("tenant:a") == Usage(used=5, reserved=0)
    assert await store.read("tenant:b") == Usage(used=0, reserved=3)


# -- lifetimes -------------------------------------------------------------------------


async def test_a_key_expires_with_its_ttl(harness: Harness) -> None:
    store = harness.store()
    await store.add("day", 50, ttl_s=1)
    await store.reserve("day", 20, limit=100, ttl_s=1)
    await store.hit("rpm", limit=1, window_s=1, now_s=1000.0)

    await harness.elapse(1.1)

    assert await store.read("day") == Usage(used=0, reserved=0)
    assert (await store.reserve("day", 100, limit=100, ttl_s=1)).granted


async def test_a_reservation_expires_and_a_late_settle_still_counts(harness: Harness) -> None:
    store = harness.store(reservation_ttl_s=0.3)
    held = await store.reserve("budget", 150, limit=200, ttl_s=TTL)
    assert held.id is not None
    assert not (await store.reserve("budget", 100, limit=200, ttl_s=TTL)).granted

    await harness.elapse(0.4)

    assert await store.read("budget") == Usage(used=0, reserved=0)
    again = await store.reserve("budget", 100, limit=200, ttl_s=TTL)
    assert again.granted
    await store.settle("budget", held.id, actual=140, ttl_s=TTL)
    assert await store.read("budget") == Usage(used=140, reserved=100)


# -- concurrency -----------------------------------------------------------------------


async def test_concurrent_reservations_never_overshoot(harness: Harness) -> None:
    store = harness.store()

    answers = await asyncio.gather(
        *(store.reserve("budget", 10, limit=200, ttl_s=TTL) for _ in range(50))
    )

    granted = [answer for answer in answers if answer.granted]
    assert len(granted) == 20
    assert len({answer.id for answer in granted}) == 20
    assert max(answer.reserved for answer in granted) == 200
    assert await store.read("budget") == Usage(used=0, reserved=200)

    await asyncio.gather(
        *(store.settle("budget", answer.id or "", 10, ttl_s=TTL) for answer in granted)
    )
    assert await store.read("budget") == Usage(used=200, reserved=0)


async def test_concurrent_settles_of_one_reservation_count_once(harness: Harness) -> None:
    store = harness.store()
    held = await store.reserve("budget", 10, limit=100, ttl_s=TTL)
    assert held.id is not None

    await asyncio.gather(*(store.settle("budget", held.id, 8, ttl_s=TTL) for _ in range(20)))

    assert await store.read("budget") == Usage(used=8, reserved=0)


async def test_concurrent_hits_allow_exactly_the_limit(harness: Harness) -> None:
    store = harness.store()

    decisions = await asyncio.gather(
        *(store.hit("rpm", limit=20, window_s=60, now_s=1000.0) for _ in range(50))
    )

    assert sum(decision.allowed for decision in decisions) == 20
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(20))


# -- rate limits -----------------------------------------------------------------------


async def test_a_rate_limit_allows_a_burst_then_one_per_interval(harness: Harness) -> None:
    store = harness.store()

    allowed = [await store.hit("rpm", limit=5, window_s=60, now_s=1000.0) for _ in range(5)]
    denied = await store.hit("rpm", limit=5, window_s=60, now_s=1000.0)

    assert [(d.allowed, d.remaining, d.retry_after_s) for d in allowed] == [
        (True, 4, 0),
        (True, 3, 0),
        (True, 2, 0),
        (True, 1, 0),
        (True, 0, 0),
    ]
    assert (denied.allowed, denied.remaining) == (False, 0)
    assert denied.retry_after_s == pytest.approx(12)
    early = await store.hit("rpm", limit=5, window_s=60, now_s=1011.0)
    assert early.retry_after_s == pytest.approx(1)
    assert (await store.hit("rpm", limit=5, window_s=60, now_s=1012.0)).allowed
    later = await store.hit("rpm", limit=5, window_s=60, now_s=1072.0)
    assert (later.allowed, later.remaining) == (True, 4)


async def test_a_rate_limit_counts_cost(harness: Harness) -> None:
    store = harness.store()

    big = await store.hit("tpm", limit=100, window_s=60, now_s=1000.0, cost=60)
    too_big = await store.hit("tpm", limit=100, window_s=60, now_s=1000.0, cost=50)
    fits = await store.hit("tpm", limit=100, window_s=60, now_s=1000.0, cost=40)

    assert (big.allowed, big.remaining) == (True, 40)
    assert (too_big.allowed, too_big.remaining) == (False, 40)
    assert too_big.retry_after_s == pytest.approx(6)
    assert (fits.allowed, fits.remaining) == (True, 0)


async def test_a_hit_that_can_never_fit_is_denied_for_ever(harness: Harness) -> None:
    store = harness.store()

    over = await store.hit("tpm", limit=100, window_s=60, now_s=1000.0, cost=101)
    closed = await store.hit("closed", limit=0, window_s=60, now_s=1000.0)

    assert (over.allowed, over.remaining, over.retry_after_s) == (False, 100, math.inf)
    assert (closed.allowed, closed.remaining, closed.retry_after_s) == (False, 0, math.inf)


async def test_rate_limits_hold_at_wall_clock_timestamps(harness: Harness) -> None:
    store = harness.store()
    now = 1_767_225_600.123456

    decisions = [await store.hit("rps", limit=3, window_s=1, now_s=now) for _ in range(4)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].retry_after_s == pytest.approx(1 / 3, abs=1e-3)
    assert (await store.hit("rps", limit=3, window_s=1, now_s=now + 1 / 3)).allowed


# -- namespaces, key kinds, arguments --------------------------------------------------


async def test_namespaces_do_not_see_each_other(harness: Harness) -> None:
    first = harness.store(namespace="one")
    second = harness.store(namespace="two")

    await first.add("budget", 5, ttl_s=TTL)
    await second.reserve("budget", 7, limit=10, ttl_s=TTL)
    await first.hit("rpm", limit=1, window_s=60, now_s=1000.0)

    assert await first.read("budget") == Usage(used=5, reserved=0)
    assert await second.read("budget") == Usage(used=0, reserved=7)
    assert (await second.hit("rpm", limit=1, window_s=60, now_s=1000.0)).allowed


async def test_a_key_is_a_counter_or_a_rate_limiter_not_both(harness: Harness) -> None:
    store = harness.store()
    await store.add("counter", 1, ttl_s=TTL)
    await store.hit("limiter", limit=5, window_s=60, now_s=1000.0)

    with pytest.raises(KeyKindError):
        await store.hit("counter", limit=5, window_s=60, now_s=1000.0)
    with pytest.raises(KeyKindError):
        await store.read("limiter")
    with pytest.raises(KeyKindError):
        await store.reserve("limiter", 1, limit=10, ttl_s=TTL)


@pytest.mark.parametrize(
    ("key", "amount", "ttl_s"),
    [("", 1, TTL), ("x:holds", 1, TTL), ("x", -1, TTL), ("x", math.nan, TTL), ("x", 1, 0)],
)
async def test_bad_arguments_are_refused(
    harness: Harness, key: str, amount: float, ttl_s: int
) -> None:
    store = harness.store()

    with pytest.raises(ValueError, match=r"."):
        await store.add(key, amount, ttl_s)
    with pytest.raises(ValueError, match=r"."):
        await store.reserve(key, amount, limit=10, ttl_s=ttl_s)


# -- Redis outages ---------------------------------------------------------------------


async def assert_unavailable_in_time(store: RedisStore) -> None:
    """The store raises StoreUnavailable, and no later than its deadline (plus slack)."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"Redis at 127\.0\.0\.1"):
        await store.reserve("budget", 1, limit=10, ttl_s=TTL)
    assert time.monotonic() - started < TIMEOUT_S + DEADLINE_SLACK_S


async def test_a_killed_redis_is_unavailable_until_it_is_back(
    own_redis_server: RedisServer,
) -> None:
    store = RedisStore(own_redis_server.url, "outage", timeout_s=TIMEOUT_S)
    try:
        await store.add("budget", 1, ttl_s=TTL)

        own_redis_server.kill()
        await assert_unavailable_in_time(store)
        with pytest.raises(StoreUnavailable):
            await store.hit("rpm", limit=1, window_s=60, now_s=1000.0)

        own_redis_server.restart()
        assert await store.read("budget") == Usage(used=0, reserved=0)
        assert (await store.reserve("budget", 1, limit=10, ttl_s=TTL)).granted
    finally:
        await store.close()


async def test_a_frozen_redis_times_out_as_unavailable(own_redis_server: RedisServer) -> None:
    store = RedisStore(own_redis_server.url, "outage", timeout_s=TIMEOUT_S)
    try:
        await store.add("budget", 1, ttl_s=TTL)

        own_redis_server.pause()
        await assert_unavailable_in_time(store)

        own_redis_server.resume()
        assert await store.read("budget") == Usage(used=1, reserved=0)
    finally:
        await store.close()


async def test_nothing_listening_is_unavailable() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", "nowhere", timeout_s=TIMEOUT_S)
    try:
        await assert_unavailable_in_time(store)
    finally:
        await store.close()


async def test_a_database_index_out_of_range_is_unavailable(
    own_redis_server: RedisServer,
) -> None:
    url = own_redis_server.url.rsplit("/", 1)[0] + "/99"
    store = RedisStore(url, "outage", timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(StoreUnavailable, match="DB index is out of range"):
            await store.reserve("budget", 1, limit=10, ttl_s=TTL)
    finally:
        await store.close()


async def test_a_user_not_allowed_to_run_scripts_is_unavailable(
    own_redis_server: RedisServer,
) -> None:
    admin = Redis.from_url(own_redis_server.url)
    try:
        await admin.execute_command(
            "ACL", "SETUSER", "noscript", "on", ">secret", "~*", "+@all", "-@scripting"
        )
    finally:
        await admin.aclose()
    url = f"redis://noscript:secret@127.0.0.1:{own_redis_server.port}/0"
    store = RedisStore(url, "outage", timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(StoreUnavailable, match="no permissions"):
            await store.reserve("budget", 1, limit=10, ttl_s=TTL)
        with pytest.raises(StoreUnavailable):
            await store.hit("rpm", limit=1, window_s=60, now_s=1000.0)
    finally:
        await store.close()
