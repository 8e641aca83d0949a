"""The routing runtime: one active policy and the live state that goes with it.

A processor asks the runtime to admit a request into its pool (waiting if the pool
says so), to decide its cluster, to start and finish the upstream call, and to find
or keep earlier answers; its :class:`~sidecar.engine.accounting.Accounting` keeps the
budgets and rate limits, and its controls (:mod:`sidecar.engine.controls`) switch
flags, hold breakers and judge canaries and SLOs. Every slot and permit it hands out
must come back through :meth:`release_slot` and :meth:`finish_call`; the processor
does that when its stream ends, whatever ends it.
"""

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.core.answer_cache import AnswerCache
from sidecar.core.breaker import CallResult, Permit, Transition
from sidecar.core.bulkhead import Ask, Slot, Verdict
from sidecar.core.canary import RolledBack
from sidecar.core.clock import Clock
from sidecar.core.degraded_queue import DegradedQueue
from sidecar.core.flags import FlagChange
from sidecar.core.fleet import Fleet
from sidecar.core.router import ActivePolicy, RouteRequest, Unavailable, route
from sidecar.domain.ids import ClusterName, ModelName
from sidecar.domain.outcome import Decision, Rejection
from sidecar.engine.accounting import Accounting
from sidecar.engine.controls import RuntimeControls
from sidecar.state.memory import MemoryStore

log = logging.getLogger("sidecar.resilience")


@dataclass(frozen=True, slots=True)
class Shed:
    """A request the pool would not take: why, and the status and wait to tell the client."""

    status: int
    reason: str
    retry_after_s: int


@dataclass
class _FailoverCall:
    """A client request that may fail over, and its attempts that got no answer yet."""

    answered: bool = False
    unanswered: list[tuple[Permit, float]] = field(default_factory=list)
    reserved: Permit | None = None
    """The first cluster's permit, taken when the request was routed, for its attempt."""
    transitions: list[Transition] = field(default_factory=list)


class RoutingRuntime(RuntimeControls):
    """Live state for one active policy, and the waiting around it."""

    def __init__(
        self,
        active: ActivePolicy,
        clock: Clock,
        accounting: Accounting | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.active = active
        self.clock = clock
        self.wall_clock = wall_clock
        self.flag_listeners: list[Callable[[FlagChange], None]] = []
        self.rollback_listeners: list[Callable[[RolledBack], None]] = []
        self.accounting = accounting if accounting is not None else Accounting(MemoryStore())
        self.transition_listeners: list[Callable[[Transition], None]] = []
        self.fleet = Fleet(active.policy)
        self._tickets = itertools.count(1)
        self._waiters: dict[int, asyncio.Future[Slot | Shed]] = {}
        self._failovers: dict[str, _FailoverCall] = {}
        self.caches = {
            name: AnswerCache(spec.answer_cache.max_entries, spec.answer_cache.max_age_s)
            for name, spec in active.policy.models.items()
            if spec.answer_cache is not None
        }
        self.cost_caches = {
            name: AnswerCache(spec.cost_cache.max_entries, spec.cost_cache.max_age_s)
            for name, spec in active.policy.models.items()
            if spec.cost_cache is not None
        }
        self.queues = {
            name: DegradedQueue(spec.degraded.queue_max)
            for name, spec in active.policy.models.items()
            if spec.degraded is not None and spec.degraded.queue_max is not None
        }

    def successor(self, active: ActivePolicy) -> "RoutingRuntime":
        """The runtime of a policy that replaces this one, with the live state carried over.

        Requests under way keep this runtime; new ones get the successor. They share what
        both must see: tickets and waiters of the pools, failover calls, the accounting,
        in-flight counts, and the breakers, pools, flags and caches that did not change
        (:meth:`Fleet.carry_over`).
        """
        successor = RoutingRuntime(active, self.clock, self.accounting, self.wall_clock)
        successor.fleet.carry_over(self.fleet)
        successor._tickets, successor._waiters = self._tickets, self._waiters
        successor._failovers = self._failovers
        successor.transition_listeners = self.transition_listeners
        successor.flag_listeners = self.flag_listeners
        successor.rollback_listeners = self.rollback_listeners
        old_models, new_models = self.active.policy.models, active.policy.models
        for name in successor.caches.keys() & self.caches.keys():
            if new_models[name].answer_cache == old_models[name].answer_cache:
                successor.caches[name] = self.caches[name]
        for name in successor.cost_caches.keys() & self.cost_caches.keys():
            if new_models[name].cost_cache == old_models[name].cost_cache:
                successor.cost_caches[name] = self.cost_caches[name]
        for name in successor.queues.keys() & self.queues.keys():
            successor.queues[name] = self.queues[name]
        return successor

    def new_ask(self, tenant: Any, priority: int) -> Ask:
        return Ask(next(self._tickets), tenant, priority)

    async def admit(self, pool: str, ask: Ask) -> Slot | Shed:
        """A slot in ``pool`` for ``ask``, waiting up to the pool's limit if it says so."""
        outcome = self.fleet.pools.acquire(pool, ask)
        self._shed_evicted(pool, outcome.evicted)
        if outcome.verdict is Verdict.GRANTED:
            assert outcome.slot is not None
            return outcome.slot
        if outcome.verdict is Verdict.SHED:
            status = 429 if outcome.too_many_for_tenant else 503
            return Shed(status, outcome.reason, outcome.retry_after_s)
        return await self._wait_for_slot(pool, ask)

    def release_slot(self, slot: Slot) -> None:
        """Give a slot back; hand freed slots to waiters (or back, if they left)."""
        for granted in self.fleet.pools.release(slot):
            waiter = self._waiters.pop(granted.ask.ticket, None)
            if waiter is None or waiter.done():
                self.release_slot(granted)
            else:
                waiter.set_result(granted)

    def decide(self, request: RouteRequest) -> Decision | Rejection | Unavailable:
        return route(request, self.active, self.fleet, self.clock.now())

    def start_call(self, decision: Decision) -> Permit | None:
        return self.start_attempt(decision.cluster)

    def finish_call(
        self, permit: Permit, result: CallResult | None, call: str | None = None
    ) -> tuple[Transition, ...]:
        """End a call; the breaker transitions it caused (kept with ``call`` if given)."""
        transitions = self.fleet.finish_call(permit, result, self.clock.now())
        self._log_transitions(transitions)
        tracked = self._failovers.get(call) if call is not None else None
        if tracked is not None:
            tracked.transitions.extend(transitions)
        return transitions

    def failover_transitions(self, call: str) -> list[Transition]:
        """Breaker transitions the attempts of ``call`` caused so far."""
        tracked = self._failovers.get(call)
        return list(tracked.transitions) if tracked is not None else []

    def start_attempt(self, cluster: ClusterName) -> Permit | None:
        """A breaker permit for a call to ``cluster`` (None: the breaker refuses it now)."""
        started = self.fleet.start_call(cluster, self.clock.now())
        self._log_transitions(started.transitions)
        return started.permit

    def no_answer(self, permit: Permit, elapsed: float) -> CallResult | None:
        """The outcome of a call given up (client gone) before any answer: slow, or none."""
        if elapsed > self._slow_after(permit):
            return CallResult(failed=False, slow=True, detail=f"no answer after {elapsed:.3f}s")
        return None

    # -- failover calls: attempts that end without response headers ---------------------
    #
    # An attempt that ends without response headers failed (connect failure, reset, per-try
    # timeout) if the client request goes on and gets an answer; it was merely cut short if
    # the client went away. Only the request phase learns which, so such attempts wait in
    # the request's failover call until it does.

    def record_unreached(self, cluster: ClusterName, status: int) -> None:
        """Count a failure for ``cluster`` when Envoy answered ``status`` without trying it."""
        permit = self.start_attempt(cluster)
        if permit is not None:
            detail = f"{status} before any model server was reached"
            self.finish_call(permit, CallResult(failed=True, slow=False, detail=detail))

    def open_failover(self, first_permit: Permit | None) -> str:
        """Start tracking a client request that may fail over; its id for the plan.

        ``first_permit`` is the first cluster's breaker permit, taken when the request
        was routed so that a half-open breaker's trial limit holds: the first attempt
        claims it. If that attempt never reaches the sidecar (Envoy could not connect),
        it counts as a failed attempt once the request is answered.
        """
        call = secrets.token_hex(16)
        self._failovers[call] = _FailoverCall(reserved=first_permit)
        return call

    def claim_reserved(self, call: str, cluster: ClusterName) -> Permit | None:
        """The permit reserved for ``cluster``'s attempt of ``call``, once; else None."""
        tracked = self._failovers.get(call)
        if tracked is None or tracked.reserved is None or tracked.reserved.cluster != cluster:
            return None
        permit, tracked.reserved = tracked.reserved, None
        return permit

    def attempt_unanswered(self, call: str, permit: Permit, elapsed: float) -> None:
        """An attempt of ``call`` ended without response headers after ``elapsed`` s."""
        tracked = self._failovers.get(call)
        if tracked is None:
            self.finish_call(permit, self.no_answer(permit, elapsed))
        elif tracked.answered:
            self.finish_call(permit, _attempt_failed(elapsed, self._slow_after(permit)), call)
        else:
            tracked.unanswered.append((permit, elapsed))

    def failover_answered(self, call: str) -> None:
        """The client request got its response: earlier unanswered attempts failed."""
        tracked = self._failovers.get(call)
        if tracked is None:
            return
        tracked.answered = True
        if tracked.reserved is not None:
            reserved, tracked.reserved = tracked.reserved, None
            elapsed = self.clock.now() - reserved.admitted_at
            tracked.unanswered.append((reserved, elapsed))
        waiting, tracked.unanswered = tracked.unanswered, []
        for permit, elapsed in waiting:
            self.finish_call(permit, _attempt_failed(elapsed, self._slow_after(permit)), call)

    def close_failover(self, call: str) -> None:
        """The client request ended; attempts still waiting were cut short."""
        tracked = self._failovers.pop(call, None)
        if tracked is None:
            return
        if tracked.reserved is not None:
            reserved = tracked.reserved
            tracked.unanswered.append((reserved, self.clock.now() - reserved.admitted_at))
        for permit, elapsed in tracked.unanswered:
            self.finish_call(permit, self.no_answer(permit, elapsed), call)

    def _slow_after(self, permit: Permit) -> float:
        return self.fleet.breakers[permit.cluster].config.slow_call_s

    def cache_for(self, model: ModelName) -> AnswerCache | None:
        return self.caches.get(model)

    def cost_cache_for(self, model: ModelName) -> AnswerCache | None:
        return self.cost_caches.get(model)

    def queue_for(self, model: ModelName) -> DegradedQueue | None:
        return self.queues.get(model)

    def snapshot(self) -> dict[str, Any]:
        state = self.fleet.snapshot(self.clock.now())
        state["answer_caches"] = {
            name: {"entries": len(cache), "hits": cache.hits, "misses": cache.misses}
            for name, cache in self.caches.items()
        }
        state["cost_caches"] = {
            name: {
                "entries": len(cache),
                "hits": cache.hits,
                "misses": cache.misses,
                "saved_usd": round(cache.saved_usd, 10),
            }
            for name, cache in self.cost_caches.items()
        }
        state["flags"] = self.fleet.flags.snapshot()
        state["canaries"] = self.fleet.canaries.snapshot()
        state["slos"] = self.fleet.slos.snapshot(self.clock.now())
        state["failover_calls"] = len(self._failovers)
        state["degraded_queues"] = {
            name: {"queued": len(queue), "capacity": queue.capacity}
            for name, queue in self.queues.items()
        }
        return state

    async def _wait_for_slot(self, pool: str, ask: Ask) -> Slot | Shed:
        waiter: asyncio.Future[Slot | Shed] = asyncio.get_running_loop().create_future()
        self._waiters[ask.ticket] = waiter
        max_wait = self.fleet.pools.max_wait_s(pool)
        try:
            async with asyncio.timeout(max_wait):
                return await asyncio.shield(waiter)
        except TimeoutError:
            if waiter.done():
                return waiter.result()
            self.fleet.pools.cancel_wait(pool, ask.ticket, timed_out=True)
            return Shed(503, f"no slot in pool '{pool}' within {max_wait:g}s", self._retry(pool))
        except BaseException:
            # Cancelled (the stream ended) just as a slot arrived: give it back.
            if waiter.done() and isinstance(granted := waiter.result(), Slot):
                self.release_slot(granted)
            raise
        finally:
            self._waiters.pop(ask.ticket, None)
            if not waiter.done():
                self.fleet.pools.cancel_wait(pool, ask.ticket)
                waiter.cancel()

    def _shed_evicted(self, pool: str, evicted: tuple[Ask, ...]) -> None:
        for ask in evicted:
            waiter = self._waiters.pop(ask.ticket, None)
            if waiter is not None and not waiter.done():
                reason = f"pool '{pool}' is full; a higher-priority request took the place"
                waiter.set_result(Shed(503, reason, self._retry(pool)))

    def _retry(self, pool: str) -> int:
        return self.fleet.pools.retry_after_s(pool)

    def _log_transitions(self, transitions: tuple[Transition, ...]) -> None:
        for transition in transitions:
            for listener in self.transition_listeners:
                listener(transition)
            log.warning(
                "breaker %s: %s -> %s",
                transition.cluster,
                transition.old.value,
                transition.new.value,
                extra={"cluster": transition.cluster, "reason": transition.reason},
            )


def _attempt_failed(elapsed: float, slow_after: float) -> CallResult:
    return CallResult(
        failed=True,
        slow=elapsed > slow_after,
        detail=f"no response headers after {elapsed:.3f}s (connect failure, reset or timeout)",
    )
