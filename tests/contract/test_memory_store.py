"""What the memory store does beyond the contract: it forgets expired keys by itself."""

from sidecar.core.clock import FakeClock
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
