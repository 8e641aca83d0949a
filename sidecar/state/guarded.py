"""A counter store that keeps answering when the shared one (Redis) is slow or down.

:class:`GuardedStore` wraps a shared :class:`~sidecar.state.store.CounterStore`
(normally :class:`~sidecar.state.redis.RedisStore`) and a local
:class:`~sidecar.state.memory.MemoryStore`. Every shared call goes through a circuit
breaker (``pybreaker``): ``fail_max`` consecutive :class:`StoreUnavailable` open it;
while open, calls skip the shared store and are answered locally at once; after
``reset_timeout_s`` calls try the shared store again (half-open, every call admitted),
and the first that succeeds closes it. Only :class:`StoreUnavailable` is a failure:
other errors (bad arguments, :class:`~sidecar.state.store.KeyKindError`) propagate as
from any store and do not trip the breaker. No call raises :class:`StoreUnavailable`.

While the shared store is out (the breaker is open, or the call failed):

- ``reserve`` reserves in the local store against ``limit`` minus the last shared view
  of the key (``used + reserved`` from the last shared reply: a replica that never saw
  the key gets the whole limit). The answer counts that view in its ``used`` and
  ``reserved``, and its id starts with :data:`LOCAL_PREFIX`, so ``settle`` knows the
  reservation lives in the local store.
- ``settle`` of a local id settles in the local store; the usage is then pushed later.
  A shared id whose settle fails is queued, to be replayed (settles are idempotent per
  id, so a replay of one that did land changes nothing). At most ``max_pending`` are
  queued: past that the oldest is dropped and counted in ``dropped`` (its usage is lost
  and its reservation expires in the shared store).
- ``add`` adds locally, to be pushed later; ``read`` answers the last shared view plus
  what was counted locally; ``hit`` asks a local rate limiter.

Reconciling: after any successful shared call, if something waits to be shared, one
background task (never two) replays the queued settles, then pushes each key's local
usage (:meth:`MemoryStore.take_used`) to the shared store. A push is a settle of a
fresh id the shared store never issued, which counts its amount once (see
:mod:`sidecar.state.store`); the id is kept until the push is confirmed, so a push whose
reply was lost is retried under the same id and still counts once. Reconciling stops at
the first failure and keeps the rest: nothing is lost, nothing counted twice.
:meth:`GuardedStore.reconcile` runs it in the foreground (tests; :meth:`close` tries a
last one within ``close_timeout_s``).

How far a budget can overshoot during an outage: each replica enforces the budget alone,
from the last shared value it saw. With N replicas and a budget that had R left when
the outage began, each may spend R, so the fleet spends up to N * R and overshoots by up
to (N - 1) * R, plus what in-flight reservations under-estimated (as without an
outage). A replica whose last view of the key is older (or that has none, and so allows
the whole limit) may also spend what was used since that view. Rate limits become per
replica: each local limiter starts empty, so the fleet allows up to N * the limit per
window (N + 1 in the window where the outage begins).

Less obvious effects of a timeout (Redis frozen rather than down, the write landing
after the deadline): a reserve that landed holds its estimate in the shared store until
its reservation expires (budget held twice for a while: the safe side); an ``add`` that
landed is counted locally too and pushed, so it counts twice (the safe side again).
Usage still local when the process ends is lost; :meth:`GuardedStore.close` tries to
share it first.
"""

import asyncio
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ParamSpec, TypedDict, TypeVar

import pybreaker

from sidecar.state import gcra
from sidecar.state.memory import SWEEP_EVERY, MemoryStore
from sidecar.state.store import (
    CounterStore,
    RateDecision,
    Reservation,
    StoreUnavailable,
    Usage,
    check_amount,
    check_key,
    check_limit,
    check_ttl,
)

log = logging.getLogger("sidecar.state")

LOCAL_PREFIX = "local:"
"""Starts the id of a reservation held in the local store."""

PUSH_PREFIX = "push:"
"""Starts the id under which local usage is settled into the shared store."""

DEFAULT_FAIL_MAX = 3
DEFAULT_RESET_TIMEOUT_S = 5.0
DEFAULT_MAX_PENDING = 100_000
DEFAULT_CLOSE_TIMEOUT_S = 1.0

READ_MEMORY_S = 900.0
"""How long a view learnt from a read is remembered (a read carries no key lifetime)."""

_OUTAGE: tuple[type[Exception], ...] = (StoreUnavailable, pybreaker.CircuitBreakerError)
"""What a shared call raises when the shared store could not, or was not asked to, answer."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


class GuardedSnapshot(TypedDict):
    """The guard's state, for metrics and the admin state page."""

    breaker: str
    """``closed``, ``open`` or ``half_open``."""
    local_operations: int
    """Calls answered by the local store since start (outages, and local-id settles)."""
    shared_failures: int
    """Shared calls that raised :class:`StoreUnavailable`."""
    pending_settles: int
    """Settles of shared reservations waiting to be replayed."""
    pending_keys: int
    """Keys with local usage waiting to be pushed."""
    reconciled: int
    """Settles replayed and usage pushes confirmed."""
    dropped: int
    """Settles or pushes given up: past ``max_pending``, or refused by the shared store."""


@dataclass(frozen=True, slots=True)
class _Settle:
    key: str
    reservation_id: str
    actual: float
    ttl_s: int


@dataclass(frozen=True, slots=True)
class _Push:
    """Usage taken from the local store, not yet confirmed in the shared one."""

    id: str
    amount: float
    ttl_s: int


@dataclass(slots=True)
class _Seen:
    used: float
    reserved: float
    expires_at: float


def _not_an_outage(error: BaseException) -> bool:
    """For ``pybreaker``'s ``exclude``: every error but an outage leaves the breaker be."""
    return not isinstance(error, StoreUnavailable)


def _state_name(state: str) -> str:
    return state.replace("-", "_")


class _BreakerEvents(pybreaker.CircuitBreakerListener):
    """Passes the breaker's failures and state changes on to the store."""

    def __init__(
        self, on_failure: Callable[[BaseException], None], on_change: Callable[[str, str], None]
    ) -> None:
        self._on_failure = on_failure
        self._on_change = on_change

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self._on_failure(exc)

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = _state_name(old_state.name) if old_state is not None else "closed"
        new = _state_name(new_state.name)
        if old != new:
            self._on_change(old, new)


class GuardedStore:
    """A :class:`~sidecar.state.store.CounterStore` that falls back to local accounting."""

    def __init__(
        self,
        shared: CounterStore,
        local: MemoryStore | None = None,
        *,
        fail_max: int = DEFAULT_FAIL_MAX,
        reset_timeout_s: float = DEFAULT_RESET_TIMEOUT_S,
        max_pending: int = DEFAULT_MAX_PENDING,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_settings(fail_max, reset_timeout_s, max_pending, close_timeout_s)
        self._shared = shared
        self._local = local if local is not None else MemoryStore(clock=clock)
        self._max_pending = max_pending
        self._close_timeout_s = close_timeout_s
        self._clock = clock
        self.state_listeners: list[Callable[[str, str], None]] = []
        """Called with (old, new) breaker state names on every change."""
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            exclude=[_not_an_outage],
            listeners=[_BreakerEvents(self._count_failure, self._state_changed)],
            name="shared counter store",
        )
        self._seen: dict[str, _Seen] = {}
        self._settles: deque[_Settle] = deque()
        self._dirty: dict[str, int] = {}
        self._pushes: dict[str, _Push] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._remembered = 0
        self._local_operations = 0
        self._shared_failures = 0
        self._last_failure = ""
        """Why the last shared call failed (for the log line when the breaker opens)."""
        self._reconciled = 0
        self._dropped = 0

    # -- the CounterStore protocol ----------------------------------------------------

    async def reserve(self, key: str, amount: float, limit: float, ttl_s: int) -> Reservation:
        check_key(key)
        check_amount(amount)
        check_limit(limit)
        check_ttl(ttl_s)
        try:
            answer = await self._try_shared(self._shared.reserve, key, amount, limit, ttl_s)
        except _OUTAGE:
            return await self._reserve_locally(key, amount, limit, ttl_s)
        self._seen[key] = _Seen(answer.used, answer.reserved, self._clock() + ttl_s)
        self._count_remembered()
        return answer

    async def settle(self, key: str, reservation_id: str, actual: float, ttl_s: int) -> None:
        check_key(key)
        check_amount(actual, "actual")
        check_ttl(ttl_s)
        if reservation_id.startswith(LOCAL_PREFIX):
            local_id = reservation_id.removeprefix(LOCAL_PREFIX)
            await self._settle_locally(key, local_id, actual, ttl_s)
            return
        try:
            await self._try_shared(self._shared.settle, key, reservation_id, actual, ttl_s)
        except _OUTAGE:
            self._local_operations += 1
            self._queue(_Settle(key, reservation_id, actual, ttl_s))

    async def add(self, key: str, amount: float, ttl_s: int) -> float:
        check_key(key)
        check_amount(amount)
        check_ttl(ttl_s)
        try:
            used = await self._try_shared(self._shared.add, key, amount, ttl_s)
        except _OUTAGE:
            return await self._add_locally(key, amount, ttl_s)
        seen = self._live_seen(key)
        reserved = seen.reserved if seen is not None else 0.0
        self._seen[key] = _Seen(used, reserved, self._clock() + ttl_s)
        self._count_remembered()
        return used

    async def read(self, key: str) -> Usage:
        check_key(key)
        try:
            usage = await self._try_shared(self._shared.read, key)
        except _OUTAGE:
            return await self._read_locally(key)
        self._remember_read(key, usage)
        return usage

    async def hit(
        self, key: str, limit: int, window_s: int, now_s: float, cost: int = 1
    ) -> RateDecision:
        check_key(key)
        gcra.check_rate_args(limit, window_s, cost)
        try:
            return await self._try_shared(self._shared.hit, key, limit, window_s, now_s, cost)
        except _OUTAGE:
            self._local_operations += 1
            return await self._local.hit(key, limit, window_s, now_s, cost)

    async def close(self) -> None:
        """Share what is left (within ``close_timeout_s``), then close both stores."""
        self._closing = True
        try:
            async with asyncio.timeout(self._close_timeout_s):
                await self.reconcile()
        except TimeoutError:
            pass
        await self._stop_background()
        if self._has_pending():
            log.warning(
                "closing the counter store with local accounting not shared",
                extra=self._pending_counts(),
            )
        try:
            await self._shared.close()
        finally:
            await self._local.close()

    # -- reconciling, state, tests ----------------------------------------------------

    async def reconcile(self) -> bool:
        """Replay queued settles, then push local usage; whether nothing is left to share.

        Stops at the first outage and keeps the rest for a later attempt. Runs one at a
        time: a call while the background task runs waits for it first.
        """
        async with self._lock:
            if await self._replay_settles():
                await self._push_usage()
        return not self._has_pending()

    def snapshot(self) -> GuardedSnapshot:
        """Counts for metrics and the admin state page."""
        return GuardedSnapshot(
            breaker=_state_name(self._breaker.current_state),
            local_operations=self._local_operations,
            shared_failures=self._shared_failures,
            pending_settles=len(self._settles),
            pending_keys=len(self._dirty.keys() | self._pushes.keys()),
            reconciled=self._reconciled,
            dropped=self._dropped,
        )

    def probe(self) -> None:
        """If the breaker is open, half-open it now: the next calls try the shared store.

        For tests (no waiting out ``reset_timeout_s``) and for an operator who knows the
        shared store is back.
        """
        if self._breaker.current_state == pybreaker.STATE_OPEN:
            self._breaker.half_open()

    # -- shared calls -----------------------------------------------------------------

    async def _call_shared(
        self, call: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """``call`` through the breaker; raises one of :data:`_OUTAGE` for an outage."""
        with self._breaker.calling():
            return await call(*args, **kwargs)

    async def _try_shared(
        self, call: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """A caller's shared call: when it succeeds, share what waits to be shared."""
        result = await self._call_shared(call, *args, **kwargs)
        self._kick()
        return result

    def _count_failure(self, exc: BaseException) -> None:
        self._shared_failures += 1
        self._last_failure = str(exc) or type(exc).__name__

    def _state_changed(self, old: str, new: str) -> None:
        opened = new == "open"
        log.warning(
            "shared counter store breaker %s -> %s%s",
            old,
            new,
            f": budgets and rate limits are counted locally ({self._last_failure})"
            if opened
            else "",
            extra={
                "breaker_from": old,
                "breaker_to": new,
                "last_failure": self._last_failure,
                **self._pending_counts(),
            },
        )
        for listener in list(self.state_listeners):
            try:
                listener(old, new)
            except Exception:
                log.exception("a counter store state listener failed")

    # -- local answers ----------------------------------------------------------------

    async def _reserve_locally(
        self, key: str, amount: float, limit: float, ttl_s: int
    ) -> Reservation:
        self._local_operations += 1
        outside = self._outside_local(key)
        room = max(0.0, limit - outside.used - outside.reserved)
        answer = await self._local.reserve(key, amount, room, ttl_s)
        return Reservation(
            granted=answer.granted,
            used=outside.used + answer.used,
            reserved=outside.reserved + answer.reserved,
            id=None if answer.id is None else LOCAL_PREFIX + answer.id,
        )

    async def _settle_locally(self, key: str, local_id: str, actual: float, ttl_s: int) -> None:
        self._local_operations += 1
        await self._local.settle(key, local_id, actual, ttl_s)
        self._dirty[key] = ttl_s
        if self._breaker.current_state == pybreaker.STATE_CLOSED:
            self._kick()

    async def _add_locally(self, key: str, amount: float, ttl_s: int) -> float:
        self._local_operations += 1
        local_used = await self._local.add(key, amount, ttl_s)
        self._dirty[key] = ttl_s
        return self._outside_local(key).used + local_used

    async def _read_locally(self, key: str) -> Usage:
        self._local_operations += 1
        outside = self._outside_local(key)
        local = await self._local.read(key)
        return Usage(used=outside.used + local.used, reserved=outside.reserved + local.reserved)

    def _outside_local(self, key: str) -> Usage:
        """What the key holds beyond the local counter.

        That is the last shared view, plus usage taken from the local counter whose push
        is not confirmed yet.
        """
        seen = self._live_seen(key)
        push = self._pushes.get(key)
        used = (seen.used if seen else 0.0) + (push.amount if push else 0.0)
        return Usage(used=used, reserved=seen.reserved if seen else 0.0)

    # -- the last shared views --------------------------------------------------------

    def _live_seen(self, key: str) -> _Seen | None:
        seen = self._seen.get(key)
        if seen is not None and seen.expires_at <= self._clock():
            del self._seen[key]
            return None
        return seen

    def _remember_read(self, key: str, usage: Usage) -> None:
        seen = self._live_seen(key)
        if seen is None:
            self._seen[key] = _Seen(usage.used, usage.reserved, self._clock() + READ_MEMORY_S)
            self._count_remembered()
        else:
            seen.used, seen.reserved = usage.used, usage.reserved

    def _count_remembered(self) -> None:
        """Forget every expired view once in a while, so memory follows the live keys."""
        self._remembered += 1
        if self._remembered % SWEEP_EVERY == 0:
            now = self._clock()
            for key in [k for k, seen in self._seen.items() if seen.expires_at <= now]:
                del self._seen[key]

    # -- pending work -----------------------------------------------------------------

    def _has_pending(self) -> bool:
        return bool(self._settles or self._dirty or self._pushes)

    def _pending_counts(self) -> dict[str, int]:
        snapshot = self.snapshot()
        return {
            "pending_settles": snapshot["pending_settles"],
            "pending_keys": snapshot["pending_keys"],
            "dropped": snapshot["dropped"],
        }

    def _queue(self, settle: _Settle) -> None:
        self._settles.append(settle)
        self._trim_queue()

    def _trim_queue(self) -> None:
        while len(self._settles) > self._max_pending:
            self._settles.popleft()
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning(
                    "counter store settle queue full (%d): dropping the oldest",
                    self._max_pending,
                    extra=self._pending_counts(),
                )

    def _kick(self) -> None:
        """Start the background reconcile if something waits and it does not run."""
        if self._closing or not self._has_pending():
            return
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.get_running_loop().create_task(
            self._reconcile_in_background(), name="counter-store-reconcile"
        )

    async def _reconcile_in_background(self) -> None:
        try:
            await self.reconcile()
        except Exception:
            log.exception("reconciling the counter store failed")

    async def _stop_background(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def _replay_settles(self) -> bool:
        """Replay queued settles, oldest first; whether the queue was emptied."""
        while self._settles:
            settle = self._settles.popleft()
            try:
                await self._call_shared(
                    self._shared.settle,
                    settle.key,
                    settle.reservation_id,
                    settle.actual,
                    settle.ttl_s,
                )
            except _OUTAGE:
                self._requeue(settle)
                return False
            except asyncio.CancelledError:
                self._requeue(settle)
                raise
            except Exception:
                log.exception("the shared counter store refused a replayed settle")
                self._dropped += 1
            else:
                self._reconciled += 1
        return True

    def _requeue(self, settle: _Settle) -> None:
        self._settles.appendleft(settle)
        self._trim_queue()

    async def _push_usage(self) -> bool:
        """Push every key's local usage; whether all of it was confirmed."""
        while (next_push := self._next_push()) is not None:
            key, push = next_push
            try:
                await self._call_shared(self._shared.settle, key, push.id, push.amount, push.ttl_s)
            except _OUTAGE:
                return False
            except Exception:
                log.exception("the shared counter store refused local usage of %r", key)
                self._dropped += 1
            else:
                self._reconciled += 1
                self._credit_seen(key, push.amount)
            del self._pushes[key]
        return True

    def _next_push(self) -> tuple[str, _Push] | None:
        """An unconfirmed push to retry, else the next key's local usage as a new push."""
        unconfirmed = next(iter(self._pushes.items()), None)
        if unconfirmed is not None:
            return unconfirmed
        while self._dirty:
            key = next(iter(self._dirty))
            ttl_s = self._dirty.pop(key)
            amount = self._local.take_used(key)
            if amount > 0:
                push = self._pushes[key] = _Push(PUSH_PREFIX + secrets.token_hex(12), amount, ttl_s)
                return key, push
        return None

    def _credit_seen(self, key: str, amount: float) -> None:
        """Move pushed usage into the last shared view: the key's total stays the same."""
        seen = self._live_seen(key)
        if seen is not None:
            seen.used += amount


def _check_settings(
    fail_max: int, reset_timeout_s: float, max_pending: int, close_timeout_s: float
) -> None:
    if fail_max < 1:
        raise ValueError(f"fail_max must be at least 1, not {fail_max!r}")
    if not (reset_timeout_s > 0 and math.isfinite(reset_timeout_s)):
        raise ValueError(f"reset_timeout_s must be a finite number > 0, not {reset_timeout_s!r}")
    if max_pending < 1:
        raise ValueError(f"max_pending must be at least 1, not {max_pending!r}")
    if not close_timeout_s >= 0:
        raise ValueError(f"close_timeout_s must be >= 0, not {close_timeout_s!r}")
