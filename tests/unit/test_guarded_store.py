"""The guarded store: local accounting while the shared store is out, and catching up.

The shared store here is a :class:`FlakyStore`: a memory store that can be switched to
raise :class:`StoreUnavailable`, before doing anything (down) or after doing it (the
reply lost, as when Redis answers after the deadline).
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.state import (
    GuardedStore,
    KeyKindError,
    MemoryStore,
    RateDecision,
    Reservation,
    StoreUnavailable,
    Usage,
)
from sidecar.state.guarded import LOCAL_PREFIX

TTL = 3600
FAIL_MAX = 3


class FlakyStore:
    """A shared store that fails on demand; what it holds is in ``inner``."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.down = False
        self.lose_replies = False
        self.calls_left: int | None = None
        """Calls that may still succeed before the store goes down (None: no limit)."""
        self.error: Exception | None = None
        self.stalled = False
        """Calls never answer (a frozen server with no deadline)."""
        self.calls = 0
        self.closed = False

    async def _before(self) -> None:
        self.calls += 1
        if self.calls_left is not None:
            if self.calls_left == 0:
                self.down = True
            self.calls_left -= 1
        if self.error is not None:
            raise self.error
        if self.down:
            raise StoreUnavailable("shared store down")
        if self.stalled:
            await asyncio.Event().wait()

    def _after(self) -> None:
        if self.lose_replies:
            raise StoreUnavailable("reply lost")

    async def reserve(self, key: str, amount: float, limit: float, ttl_s: int) -> Reservation:
        await self._before()
        answer = await self.inner.reserve(key, amount, limit, ttl_s)
        self._after()
        return answer

    async def settle(self, key: str, reservation_id: str, actual: float, ttl_s: int) -> None:
        await self._before()
        await self.inner.settle(key, reservation_id, actual, ttl_s)
        self._after()

    async def add(self, key: str, amount: float, ttl_s: int) -> float:
        await self._before()
        used = await self.inner.add(key, amount, ttl_s)
        self._after()
        return used

    async def read(self, key: str) -> Usage:
        await self._before()
        usage = await self.inner.read(key)
        self._after()
        return usage

    async def hit(
        self, key: str, limit: int, window_s: int, now_s: float, cost: int = 1
    ) -> RateDecision:
        await self._before()
        decision = await self.inner.hit(key, limit, window_s, now_s, cost)
        self._after()
        return decision

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def shared() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def local() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def store(shared: FlakyStore, local: MemoryStore) -> AsyncIterator[GuardedStore]:
    guarded = GuardedStore(shared, local, fail_max=FAIL_MAX, reset_timeout_s=60)
    yield guarded
    await guarded.close()


async def trip(store: GuardedStore, shared: FlakyStore) -> None:
    """Take the shared store down and open the breaker."""
    shared.down = True
    for _ in range(FAIL_MAX):
        await store.read("probe")
    assert store.snapshot()["breaker"] == "open"


async def recover(store: GuardedStore, shared: FlakyStore) -> None:
    """Bring the shared store back and let the next calls try it."""
    shared.down = False
    store.probe()


async def settle_background(store: GuardedStore) -> None:
    """Let the background reconcile run to its end (the fake store never suspends)."""
    for _ in range(100):
        snapshot = store.snapshot()
        if snapshot["pending_settles"] == 0 and snapshot["pending_keys"] == 0:
            return
        await asyncio.sleep(0)


# -- while the shared store answers ----------------------------------------------------


async def test_calls_go_to_the_shared_store_while_it_answers(
    store: GuardedStore, shared: FlakyStore, local: MemoryStore
) -> None:
    held = await store.reserve("budget", 30, limit=100, ttl_s=TTL)
    assert held.id is not None
    await store.settle("budget", held.id, actual=25, ttl_s=TTL)
    assert await store.add("budget", 5, ttl_s=TTL) == 30
    assert (await store.hit("rpm", limit=1, window_s=60, now_s=1000.0)).allowed

    assert not held.id.startswith(LOCAL_PREFIX)
    assert await store.read("budget") == Usage(used=30, reserved=0)
    assert await shared.inner.read("budget") == Usage(used=30, reserved=0)
    assert local.size == 0
    assert store.snapshot() == {
        "breaker": "closed",
        "local_operations": 0,
        "shared_failures": 0,
        "pending_settles": 0,
        "pending_keys": 0,
        "reconciled": 0,
        "dropped": 0,
    }


# -- falling back ----------------------------------------------------------------------


async def test_an_outage_is_answered_locally_and_never_raises(
    store: GuardedStore, shared: FlakyStore
) -> None:
    shared.down = True

    held = await store.reserve("budget", 10, limit=100, ttl_s=TTL)
    await store.settle("budget", held.id or "", actual=8, ttl_s=TTL)
    used = await store.add("budget", 2, ttl_s=TTL)
    usage = await store.read("budget")
    decision = await store.hit("rpm", limit=5, window_s=60, now_s=1000.0)

    assert held.granted
    assert (used, usage) == (10, Usage(used=10, reserved=0))
    assert (decision.allowed, decision.remaining) == (True, 4)
    snapshot = store.snapshot()
    assert snapshot["local_operations"] == 5
    assert snapshot["shared_failures"] == FAIL_MAX
    assert snapshot["breaker"] == "open"
    assert snapshot["pending_keys"] == 1


async def test_the_open_breaker_stops_asking_the_shared_store(
    store: GuardedStore, shared: FlakyStore
) -> None:
    await trip(store, shared)
    calls = shared.calls

    for _ in range(10):
        await store.reserve("budget", 1, limit=100, ttl_s=TTL)

    assert shared.calls == calls == FAIL_MAX
    assert store.snapshot()["shared_failures"] == FAIL_MAX


async def test_local_reservations_are_limited_by_the_last_shared_view(
    store: GuardedStore, shared: FlakyStore
) -> None:
    await shared.inner.add("budget", 60, ttl_s=TTL)
    seen = await store.reserve("budget", 10, limit=100, ttl_s=TTL)
    assert (seen.used, seen.reserved) == (60, 10)
    await trip(store, shared)

    local = await store.reserve("budget", 25, limit=100, ttl_s=TTL)
    refused = await store.reserve("budget", 6, limit=100, ttl_s=TTL)
    last = await store.reserve("budget", 5, limit=100, ttl_s=TTL)

    assert local.granted
    assert local.id is not None
    assert local.id.startswith(LOCAL_PREFIX)
    assert (local.used, local.reserved) == (60, 35)
    assert (refused.granted, refused.id) == (False, None)
    assert (refused.used, refused.reserved) == (60, 35)
    assert last.granted
    assert (last.used, last.reserved) == (60, 40)
    assert await store.read("budget") == Usage(used=60, reserved=40)


async def test_local_usage_counts_against_the_local_limit(
    store: GuardedStore, shared: FlakyStore
) -> None:
    await store.reserve("budget", 0, limit=100, ttl_s=TTL)
    await trip(store, shared)
    held = await store.reserve("budget", 50, limit=100, ttl_s=TTL)
    await store.settle("budget", held.id or "", actual=70, ttl_s=TTL)

    assert not (await store.reserve("budget", 31, limit=100, ttl_s=TTL)).granted
    assert (await store.reserve("budget", 30, limit=100, ttl_s=TTL)).granted


async def test_a_key_never_seen_gets_the_whole_limit_locally(
    store: GuardedStore, shared: FlakyStore
) -> None:
    await shared.inner.add("budget", 90, ttl_s=TTL)
    await trip(store, shared)

    answer = await store.reserve("budget", 100, limit=100, ttl_s=TTL)

    assert answer.granted
    assert (answer.used, answer.reserved) == (0, 100)


async def test_reads_fall_back_to_the_last_view_plus_local_usage(
    store: GuardedStore, shared: FlakyStore
) -> None:
    await shared.inner.add("budget", 40, ttl_s=TTL)
    await shared.inner.reserve("budget", 5, limit=100, ttl_s=TTL)
    assert await store.read("budget") == Usage(used=40, reserved=5)
    await trip(store, shared)

    await store.add("budget", 3, ttl_s=TTL)
    await store.reserve("budget", 7, limit=100, ttl_s=TTL)

    assert await store.read("budget") == Usage(used=43, reserved=12)


async def test_rate_limits_fall_back_to_a_local_limiter(
    store: GuardedStore, shared: FlakyStore
) -> None:
    await store.hit("rpm", limit=2, window_s=60, now_s=1000.0)
    await store.hit("rpm", limit=2, window_s=60, now_s=1000.0)
    assert not (await store.hit("rpm", limit=2, window_s=60, now_s=1000.0)).allowed
    await trip(store, shared)

    decisions = [await store.hit("rpm", limit=2, window_s=60, now_s=1000.0) for _ in range(3)]

    assert [d.allowed for d in decisions] == [True, True, False]


# -- settling --------------------------------------------------------------------------


async def test_a_local_id_settles_in_the_local_store(
    store: GuardedStore, shared: FlakyStore, local: MemoryStore
) -> None:
    await trip(store, shared)
    held = await store.reserve("budget", 10, limit=100, ttl_s=TTL)
    await recover(store, shared)

    await store.settle("budget", held.id or "", actual=9, ttl_s=TTL)
    await store.reconcile()

    assert await shared.inner.read("budget") == Usage(used=9, reserved=0)
    assert await local.read("budget") == Usage(used=0, reserved=0)


async def test_a_shared_id_settles_in_the_shared_store(
    store: GuardedStore, shared: FlakyStore, local: MemoryStore
) -> None:
    held = await store.reserve("budget", 10, limit=100, ttl_s=TTL)

    await store.settle("budget", held.id or "", actual=9, ttl_s=TTL)

    assert await shared.inner.read("budget") == Usage(used=9, reserved=0)
    assert local.size == 0


async def test_a_shared_settle_that_fails_is_queued_then_replayed(
    store: GuardedStore, shared: FlakyStore
) -> None:
    held = await store.reserve("budget", 10, limit=100, ttl_s=TTL)
    shared.down = True

    await store.settle("budget", held.id or "", actual=12, ttl_s=TTL)

    assert store.snapshot()["pending_settles"] == 1
    assert await shared.inner.read("budget") == Usage(used=0, reserved=10)
    await recover(store, shared)
    await store.read("other")
    await settle_background(store)
    assert await shared.inner.read("budget") == Usage(used=12, reserved=0)
    assert store.snapshot()["pending_settles"] == 0
    assert store.snapshot()["reconciled"] == 1


# -- reconciling -----------------------------------------------------------------------


async def test_local_usage_is_pushed_when_the_shared_store_returns(
    store: GuardedStore, shared: FlakyStore, local: MemoryStore
) -> None:
    await store.add("budget", 50, ttl_s=TTL)
    await trip(store, shared)
    held = await store.reserve("budget", 10, limit=100, ttl_s=TTL)
    await store.settle("budget", held.id or "", actual=8, ttl_s=TTL)
    await store.add("tokens", 100, ttl_s=TTL)
    assert store.snapshot()["pending_keys"] == 2

    await recover(store, shared)
    assert await store.reconcile()

    assert await shared.inner.read("budget") == Usage(used=58, reserved=0)
    assert await shared.inner.read("tokens") == Usage(used=100, reserved=0)
    assert await local.read("budget") == Usage(used=0, reserved=0)
    assert await store.read("budget") == Usage(used=58, reserved=0)
    assert store.snapshot()["pending_keys"] == 0
    assert store.snapshot()["reconciled"] == 2


async def test_a_successful_call_starts_the_reconcile_in_the_background(
    store: GuardedStore, shared: FlakyStore
) -> None:
    await trip(store, shared)
    await store.add("budget", 5, ttl_s=TTL)
    await recover(store, shared)

    await store.read("budget")
    await settle_background(store)

    assert await shared.inner.read("budget") == Usage(used=5, reserved=0)


async def test_local_reservations_still_in_flight_keep_their_room(
    store: GuardedStore, shared: FlakyStore, local: MemoryStore
) -> None:
    await trip(store, shared)
    held = await store.reserve("budget", 10, limit=100, ttl_s=TTL)
    await store.add("budget", 4, ttl_s=TTL)
    await recover(store, shared)
    assert await store.reconcile()

    assert await local.read("budget") == Usage(used=0, reserved=10)
    await store.settle("budget", held.id or "", actual=10, ttl_s=TTL)
    await store.settle("budget", held.id or "", actual=10, ttl_s=TTL)
    assert await store.reconcile()
    assert await shared.inner.read("budget") == Usage(used=14, reserved=0)


async def test_usage_counted_locally_on_a_failed_push_still_fits_the_limit(
    store: GuardedStore, shared: FlakyStore
) -> None:
    await store.reserve("budget", 0, limit=100, ttl_s=TTL)
    await trip(store, shared)
    await store.add("budget", 60, ttl_s=TTL)
    await recover(store, shared)
    shared.lose_replies = True
    assert not await store.reconcile()
    await trip(store, shared)

    assert not (await store.reserve("budget", 41, limit=100, ttl_s=TTL)).granted
    assert await store.read("budget") == Usage(used=60, reserved=0)


async def test_a_reconcile_failing_midway_loses_nothing_and_counts_nothing_twice(
    store: GuardedStore, shared: FlakyStore
) -> None:
    held = [await store.reserve(f"k{i}", 10, limit=100, ttl_s=TTL) for i in range(4)]
    await trip(store, shared)
    for index, answer in enumerate(held):
        await store.settle(f"k{index}", answer.id or "", actual=index + 1, ttl_s=TTL)
        await store.add(f"k{index}", 10, ttl_s=TTL)
    await recover(store, shared)

    shared.calls_left = 5
    assert not await store.reconcile()
    assert store.snapshot()["pending_settles"] == 0
    assert store.snapshot()["pending_keys"] == 3
    shared.calls_left = None
    await recover(store, shared)
    assert await store.reconcile()

    for index in range(4):
        assert await shared.inner.read(f"k{index}") == Usage(used=index + 11, reserved=0)


async def test_a_replayed_settle_whose_reply_was_lost_counts_once(
    store: GuardedStore, shared: FlakyStore
) -> None:
    held = await store.reserve("budget", 10, limit=100, ttl_s=TTL)
    await trip(store, shared)
    await store.settle("budget", held.id or "", actual=7, ttl_s=TTL)
    await recover(store, shared)

    shared.lose_replies = True
    assert not await store.reconcile()
    store.probe()
    assert not await store.reconcile()
    assert store.snapshot()["pending_settles"] == 1
    shared.lose_replies = False
    store.probe()
    assert await store.reconcile()

    assert await shared.inner.read("budget") == Usage(used=7, reserved=0)


async def test_a_push_whose_reply_was_lost_counts_once(
    store: GuardedStore, shared: FlakyStore, local: MemoryStore
) -> None:
    await trip(store, shared)
    await store.add("budget", 20, ttl_s=TTL)
    await recover(store, shared)

    shared.lose_replies = True
    assert not await store.reconcile()
    await store.add("budget", 1, ttl_s=TTL)
    store.probe()
    assert not await store.reconcile()
    assert store.snapshot()["pending_keys"] == 1
    assert await local.read("budget") == Usage(used=1, reserved=0)
    shared.lose_replies = False
    store.probe()
    assert await store.reconcile()

    assert await shared.inner.read("budget") == Usage(used=21, reserved=0)


async def test_settles_past_max_pending_drop_the_oldest(shared: FlakyStore) -> None:
    store = GuardedStore(shared, fail_max=1, reset_timeout_s=60, max_pending=3)
    held = [await store.reserve("budget", 1, limit=100, ttl_s=TTL) for _ in range(5)]
    shared.down = True
    for actual, answer in enumerate(held, start=1):
        await store.settle("budget", answer.id or "", actual=actual, ttl_s=TTL)

    assert store.snapshot()["pending_settles"] == 3
    assert store.snapshot()["dropped"] == 2
    await recover(store, shared)
    assert await store.reconcile()
    assert (await shared.inner.read("budget")).used == 3 + 4 + 5
    await store.close()


# -- errors that are not outages -------------------------------------------------------


async def test_other_errors_propagate_and_do_not_trip_the_breaker(
    store: GuardedStore, shared: FlakyStore
) -> None:
    shared.error = KeyKindError("a rate limiter, not a counter")

    for _ in range(FAIL_MAX * 2):
        with pytest.raises(KeyKindError):
            await store.reserve("budget", 1, limit=10, ttl_s=TTL)

    assert shared.calls == FAIL_MAX * 2
    snapshot = store.snapshot()
    assert (snapshot["breaker"], snapshot["shared_failures"]) == ("closed", 0)
    assert snapshot["local_operations"] == 0


async def test_bad_arguments_are_refused_before_any_call(
    store: GuardedStore, shared: FlakyStore
) -> None:
    with pytest.raises(ValueError, match="amount"):
        await store.reserve("budget", -1, limit=10, ttl_s=TTL)
    with pytest.raises(ValueError, match="ttl_s"):
        await store.settle("budget", "id", actual=1, ttl_s=0)
    with pytest.raises(ValueError, match="holds"):
        await store.add("budget:holds", 1, ttl_s=TTL)
    with pytest.raises(ValueError, match="cost"):
        await store.hit("rpm", limit=1, window_s=60, now_s=1.0, cost=0)

    assert shared.calls == 0


@pytest.mark.parametrize(
    "settings",
    [
        {"fail_max": 0},
        {"reset_timeout_s": 0},
        {"max_pending": 0},
        {"close_timeout_s": -1},
    ],
)
def test_bad_settings_are_refused(shared: FlakyStore, settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(settings))):
        GuardedStore(shared, **settings)


# -- breaker state ---------------------------------------------------------------------


async def test_listeners_and_the_log_hear_every_state_change(
    store: GuardedStore, shared: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    changes: list[tuple[str, str]] = []
    store.state_listeners.append(lambda old, new: changes.append((old, new)))

    with caplog.at_level(logging.WARNING, logger="sidecar.state"):
        await trip(store, shared)
        await recover(store, shared)
        assert store.snapshot()["breaker"] == "half_open"
        await store.read("budget")

    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    warnings = [r for r in caplog.records if r.name == "sidecar.state"]
    assert [(r.__dict__["breaker_from"], r.__dict__["breaker_to"]) for r in warnings] == changes
    assert store.snapshot()["breaker"] == "closed"


async def test_a_failed_trial_opens_the_breaker_again(
    store: GuardedStore, shared: FlakyStore
) -> None:
    await trip(store, shared)
    store.probe()

    answer = await store.reserve("budget", 1, limit=10, ttl_s=TTL)

    assert answer.granted
    assert store.snapshot()["breaker"] == "open"
    assert shared.calls == FAIL_MAX + 1


async def test_a_listener_that_raises_does_not_break_the_store(
    store: GuardedStore, shared: FlakyStore
) -> None:
    def broken(old: str, new: str) -> None:
        raise RuntimeError("listener bug")

    store.state_listeners.append(broken)

    await trip(store, shared)

    assert (await store.reserve("budget", 1, limit=10, ttl_s=TTL)).granted


# -- closing ---------------------------------------------------------------------------


async def test_close_shares_what_is_left_then_closes_both_stores(shared: FlakyStore) -> None:
    store = GuardedStore(shared, fail_max=1, reset_timeout_s=60)
    await trip(store, shared)
    await store.add("budget", 5, ttl_s=TTL)
    await recover(store, shared)

    await store.close()

    assert await shared.inner.read("budget") == Usage(used=5, reserved=0)
    assert shared.closed


async def test_close_still_closes_both_stores_while_the_shared_store_is_out(
    shared: FlakyStore,
) -> None:
    store = GuardedStore(shared, fail_max=1, reset_timeout_s=60)
    await trip(store, shared)
    await store.add("budget", 5, ttl_s=TTL)

    await store.close()

    assert store.snapshot()["pending_keys"] == 1
    assert shared.closed


async def test_close_gives_up_sharing_after_its_bound(shared: FlakyStore) -> None:
    store = GuardedStore(shared, fail_max=1, reset_timeout_s=60, close_timeout_s=0.05)
    await trip(store, shared)
    await store.add("budget", 5, ttl_s=TTL)
    await recover(store, shared)
    shared.stalled = True

    await store.close()

    assert store.snapshot()["pending_keys"] == 1
    assert shared.closed
