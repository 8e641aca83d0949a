"""What the memory store does beyond the contract: it forgets expired keys by itself, and
hands its used amounts over (``take_used``, for the guarded store).
"""

from sidecar.core.clock import FakeClock
from sidecar.state import Usage
from sidecar.state.memory import SWEEP_EVERY, MemoryStore
from sidecar.state.store import SETTLED_TTL_S


async def test_expired_keys_are_swept_without_being_touched() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock.now)
    for index in range(100):
        await store.add(f"old:{index}", 1, ttl_s=60)
    clock.advance(61)

    for _ in range(SWEEP_EVERY):
        await store.add("live", 1, ttl_s=60)

    assert store.size == 1


async def test_take_used_moves_used_out_and_keeps_reservations_and_settled_ids() -> None:
    store = MemoryStore(clock=FakeClock().now)
    await store.add("budget", 5, ttl_s=60)
    held = await store.reserve("budget", 10, limit=100, ttl_s=60)
    settled = await store.reserve("budget", 3, limit=100, ttl_s=60)
    await store.settle("budget", settled.id or "", actual=2, ttl_s=60)

    taken = store.take_used("budget")
    await store.settle("budget", settled.id or "", actual=2, ttl_s=60)

    assert taken == 7
    assert await store.read("budget") == Usage(used=0, reserved=10)
    await store.settle("budget", held.id or "", actual=9, ttl_s=60)
    assert store.take_used("budget") == 9
    assert store.take_used("budget") == 0


async def test_take_used_of_an_absent_or_expired_key_is_zero() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock.now)
    await store.add("budget", 5, ttl_s=60)
    clock.advance(61)

    assert store.take_used("budget") == 0
    assert store.take_used("never-written") == 0


async def test_settled_ids_are_remembered_for_an_hour_not_the_whole_window() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock.now)
    month = 31 * 86_400
    held = await store.reserve("budget", 10, limit=100, ttl_s=month)
    await store.settle("budget", held.id or "", actual=4, ttl_s=month)
    clock.advance(SETTLED_TTL_S - 1)
    await store.settle("budget", held.id or "", actual=4, ttl_s=month)
    assert (await store.read("budget")).used == 4
    clock.advance(2)
    await store.add("budget", 0, ttl_s=month)  # any write prunes what expired
    assert store.settled_ids("budget") == 0


async def test_pruning_keeps_reservations_that_have_not_expired() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock.now, reservation_ttl_s=10)
    early = await store.reserve("budget", 1, limit=100, ttl_s=600)
    clock.advance(5)
    late = await store.reserve("budget", 2, limit=100, ttl_s=600)
    await store.settle("budget", early.id or "", actual=1, ttl_s=600)
    clock.advance(6)  # the early hold's expiry passes: it was settled, so nothing changes
    assert await store.read("budget") == Usage(used=1, reserved=2)
    clock.advance(5)  # the late one expires unsettled
    assert await store.read("budget") == Usage(used=1, reserved=0)
    assert late.granted
