"""Bulkhead pools: isolation, bounded waiting, priority shedding and overflow."""

from itertools import count

from sidecar.core.bulkhead import Ask, PoolConfig, PoolSet, Verdict
from sidecar.domain.ids import TenantId

_tickets = count(1)


def ask(priority: int = 10, tenant: str = "t1") -> Ask:
    return Ask(next(_tickets), TenantId(tenant), priority)


def pools(*configs: PoolConfig) -> PoolSet:
    return PoolSet(list(configs))


def test_grants_up_to_the_limit_then_sheds_without_a_line() -> None:
    p = pools(PoolConfig("free", max_concurrent=2, retry_after_s=3))
    assert p.acquire("free", ask()).verdict is Verdict.GRANTED
    assert p.acquire("free", ask()).verdict is Verdict.GRANTED
    shed = p.acquire("free", ask())
    assert shed.verdict is Verdict.SHED
    assert (shed.reason, shed.retry_after_s) == ("pool 'free' is full", 3)


def test_a_released_slot_goes_to_the_highest_priority_waiter_first() -> None:
    p = pools(PoolConfig("paid", max_concurrent=1, max_waiting=3, max_wait_s=2))
    held = p.acquire("paid", ask()).slot
    assert held is not None
    low, high, high_later = ask(priority=10), ask(priority=50), ask(priority=50)
    for waiter in (low, high, high_later):
        assert p.acquire("paid", waiter).verdict is Verdict.QUEUED
    (granted,) = p.release(held)
    assert granted.ask == high, "priority first, then arrival order"
    (granted,) = p.release(granted)
    assert granted.ask == high_later
    (granted,) = p.release(granted)
    assert granted.ask == low


def test_low_priority_does_not_wait_and_is_shed_first() -> None:
    p = pools(PoolConfig("mixed", max_concurrent=1, max_waiting=5, min_wait_priority=20))
    p.acquire("mixed", ask())
    assert p.acquire("mixed", ask(priority=5)).verdict is Verdict.SHED
    assert p.acquire("mixed", ask(priority=20)).verdict is Verdict.QUEUED


def test_a_full_line_evicts_its_lowest_waiter_for_a_higher_one() -> None:
    p = pools(PoolConfig("mixed", max_concurrent=1, max_waiting=2))
    p.acquire("mixed", ask())
    micro, normal = ask(priority=1), ask(priority=10)
    p.acquire("mixed", micro)
    p.acquire("mixed", normal)
    large = p.acquire("mixed", ask(priority=90))
    assert large.verdict is Verdict.QUEUED
    assert large.evicted == (micro,), "the micro transaction is shed for the large one"
    assert p.acquire("mixed", ask(priority=1)).verdict is Verdict.SHED, "nobody lower to evict"


def test_overflow_takes_higher_priority_traffic_to_the_named_pool() -> None:
    p = pools(
        PoolConfig("enterprise", max_concurrent=1, overflow="spare", overflow_min_priority=80),
        PoolConfig("spare", max_concurrent=1),
    )
    p.acquire("enterprise", ask(priority=90))
    assert p.acquire("enterprise", ask(priority=50)).verdict is Verdict.SHED
    spilled = p.acquire("enterprise", ask(priority=90))
    assert spilled.slot is not None
    assert spilled.slot.pool == "spare"
    assert p.acquire("enterprise", ask(priority=90)).verdict is Verdict.SHED, "spare is full too"


def test_pools_are_isolated_a_flood_in_one_leaves_the_other_alone() -> None:
    p = pools(PoolConfig("free", max_concurrent=2), PoolConfig("paid", max_concurrent=2))
    verdicts = [p.acquire("free", ask(tenant="flooder")).verdict for _ in range(20)]
    assert verdicts.count(Verdict.GRANTED) == 2
    assert p.acquire("paid", ask(tenant="payer")).verdict is Verdict.GRANTED


def test_a_tenant_cap_keeps_one_tenant_from_taking_the_whole_pool() -> None:
    p = pools(PoolConfig("paid", max_concurrent=10, per_tenant_max=2))
    p.acquire("paid", ask(tenant="greedy"))
    p.acquire("paid", ask(tenant="greedy"))
    third = p.acquire("paid", ask(tenant="greedy"))
    assert third.verdict is Verdict.SHED
    assert third.too_many_for_tenant
    assert p.acquire("paid", ask(tenant="polite")).verdict is Verdict.GRANTED


def test_a_waiter_that_gives_up_leaves_the_line() -> None:
    p = pools(PoolConfig("paid", max_concurrent=1, max_waiting=2))
    held = p.acquire("paid", ask()).slot
    assert held is not None
    gone = ask()
    p.acquire("paid", gone)
    assert p.cancel_wait("paid", gone.ticket)
    assert not p.cancel_wait("paid", gone.ticket)
    assert p.release(held) == []
    assert p.snapshot()["paid"] == {
        "in_use": 0,
        "max_concurrent": 1,
        "waiting": 0,
        "shed": 0,
        "overflowed_in": 0,
    }
