"""What the memory store does beyond the contract: it forgets expired keys by itself, and
hands its used amounts over (``take_used``, for the guarded store).
"""

from sidecar.core.clock import FakeClock
from sidecar.state import Usage
from sidecar.state.memory import SWEEP_EVERY, MemoryStore


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
