"""Bulkhead pools: bounded concurrency per pool, a bounded wait, shedding by priority.

A :class:`Pool` has ``max_concurrent`` slots. A request that finds it full either
waits (when its priority is at least ``min_wait_priority`` and the waiting line has
room, or it outranks the lowest-priority waiter, who is then shed), or overflows to
the pool the policy names (when its priority allows), or is shed at once. Slots
freed go to the highest-priority waiter first, oldest first among equals. A
per-tenant cap inside the pool keeps one tenant from taking all of it.

Pure bookkeeping: waiting is a ticket in a list; the driver turns it into an
awaitable, and tells the pool when a wait ends (granted, timed out, cancelled).
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

from sidecar.domain.ids import TenantId
from sidecar.domain.resilience import PoolConfig


class Verdict(Enum):
    """What became of a request asking a pool for a slot."""

    GRANTED = "granted"
    QUEUED = "queued"
    SHED = "shed"


@dataclass(frozen=True, slots=True)
class Ask:
    """A request asking for a slot: who, how important, and a unique ticket."""

    ticket: int
    tenant: TenantId
    priority: int


@dataclass(frozen=True, slots=True)
class Slot:
    """A held slot; give it back with :meth:`PoolSet.release` exactly once."""

    pool: str
    ask: Ask


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to an :class:`Ask`.

    ``slot`` when granted; ``evicted`` lists waiters shed to make room for this one;
    ``reason`` says why a request was shed.
    """

    verdict: Verdict
    slot: Slot | None = None
    reason: str = ""
    retry_after_s: int = 0
    too_many_for_tenant: bool = False
    evicted: tuple[Ask, ...] = ()


@dataclass
class _PoolState:
    config: PoolConfig
    in_use: int = 0
    by_tenant: dict[TenantId, int] = field(default_factory=dict)
    waiting: list[Ask] = field(default_factory=list)
    shed: int = 0
    overflowed_in: int = 0


class PoolSet:
    """All pools of the policy, and the slots held in them."""

    def __init__(self, configs: list[PoolConfig]) -> None:
        self._pools = {config.name: _PoolState(config) for config in configs}

    def carry_over(self, earlier: "PoolSet") -> None:
        """Keep ``earlier``'s state (slots held, waiters) of each pool whose settings stay.

        A changed or new pool starts empty; slots held in the earlier one go back to it.
        """
        for name, state in self._pools.items():
            kept = earlier._pools.get(name)
            if kept is not None and kept.config == state.config:
                self._pools[name] = kept

    def acquire(self, pool: str, ask: Ask) -> Outcome:
        """Grant, queue or shed ``ask`` in ``pool`` (or in its overflow pool)."""
        state = self._pools[pool]
        config = state.config
        if config.per_tenant_max is not None and (
            state.by_tenant.get(ask.tenant, 0) >= config.per_tenant_max
        ):
            state.shed += 1
            return Outcome(
                Verdict.SHED,
                reason=f"tenant has {config.per_tenant_max} requests in flight in pool "
                f"'{pool}', its limit",
                retry_after_s=config.retry_after_s,
                too_many_for_tenant=True,
            )
        if state.in_use < config.max_concurrent:
            return Outcome(Verdict.GRANTED, self._take(state, ask))
        overflow = self._overflow_slot(config, ask)
        if overflow is not None:
            return Outcome(Verdict.GRANTED, overflow)
        return self._wait_or_shed(state, ask)

    def release(self, slot: Slot) -> list[Slot]:
        """Give ``slot`` back; return the slots this hands to waiters, in grant order."""
        state = self._pools[slot.pool]
        state.in_use -= 1
        held = state.by_tenant[slot.ask.tenant] - 1
        if held:
            state.by_tenant[slot.ask.tenant] = held
        else:
            del state.by_tenant[slot.ask.tenant]
        return list(self._serve_waiters(state))

    def cancel_wait(self, pool: str, ticket: int, timed_out: bool = False) -> bool:
        """Take a waiter out of line; False if it was not waiting.

        A waiter whose wait ran out counts as shed; one that went away does not.
        """
        state = self._pools[pool]
        for position, ask in enumerate(state.waiting):
            if ask.ticket == ticket:
                del state.waiting[position]
                state.shed += int(timed_out)
                return True
        return False

    def max_wait_s(self, pool: str) -> float:
        return self._pools[pool].config.max_wait_s

    def retry_after_s(self, pool: str) -> int:
        return self._pools[pool].config.retry_after_s

    def occupancy(self, pool: str) -> tuple[int, int]:
        """Slots of ``pool`` in use, and its capacity."""
        state = self._pools[pool]
        return state.in_use, state.config.max_concurrent

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Occupancy of every pool, for the admin state view and metrics."""
        return {
            name: {
                "in_use": state.in_use,
                "max_concurrent": state.config.max_concurrent,
                "waiting": len(state.waiting),
                "shed": state.shed,
                "overflowed_in": state.overflowed_in,
            }
            for name, state in self._pools.items()
        }

    def _take(self, state: _PoolState, ask: Ask) -> Slot:
        state.in_use += 1
        state.by_tenant[ask.tenant] = state.by_tenant.get(ask.tenant, 0) + 1
        return Slot(state.config.name, ask)

    def _overflow_slot(self, config: PoolConfig, ask: Ask) -> Slot | None:
        if config.overflow is None or ask.priority < config.overflow_min_priority:
            return None
        target = self._pools[config.overflow]
        if target.in_use >= target.config.max_concurrent:
            return None
        target.overflowed_in += 1
        return self._take(target, ask)

    def _wait_or_shed(self, state: _PoolState, ask: Ask) -> Outcome:
        config = state.config
        if ask.priority < config.min_wait_priority or config.max_waiting == 0:
            return self._shed(state, f"pool '{config.name}' is full")
        evicted: tuple[Ask, ...] = ()
        if len(state.waiting) >= config.max_waiting:
            lowest = min(state.waiting, key=lambda waiter: (waiter.priority, -waiter.ticket))
            if lowest.priority >= ask.priority:
                return self._shed(state, f"pool '{config.name}' is full and its line too")
            state.waiting.remove(lowest)
            state.shed += 1
            evicted = (lowest,)
        state.waiting.append(ask)
        state.waiting.sort(key=lambda waiter: (-waiter.priority, waiter.ticket))
        return Outcome(Verdict.QUEUED, evicted=evicted)

    def _shed(self, state: _PoolState, reason: str) -> Outcome:
        state.shed += 1
        return Outcome(Verdict.SHED, reason=reason, retry_after_s=state.config.retry_after_s)

    def _serve_waiters(self, state: _PoolState) -> Iterator[Slot]:
        while state.waiting and state.in_use < state.config.max_concurrent:
            yield self._take(state, state.waiting.pop(0))
