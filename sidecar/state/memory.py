"""The embedded counter store: one process's counters in a dictionary.

:class:`MemoryStore` is the default when no Redis is configured, and the local fallback
when Redis is out. No method awaits anything, so each runs to completion without
interleaving with other tasks of the event loop: that is what makes it atomic under
asyncio (it is not thread-safe). Expiry follows the injected clock (monotonic seconds
by default; a fake clock in tests). Expired entries are dropped when touched, and all of
them every :data:`SWEEP_EVERY` writes, so memory stays bounded by the live keys.
"""

import heapq
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.state import gcra
from sidecar.state.store import (
    DEFAULT_RESERVATION_TTL_S,
    SETTLED_TTL_S,
    KeyKindError,
    RateDecision,
    Reservation,
    Usage,
    check_amount,
    check_key,
    check_limit,
    check_reservation_ttl,
    check_ttl,
    fits,
)

SWEEP_EVERY = 1024
"""Writes between two sweeps of every expired entry."""


@dataclass(slots=True)
class _Hold:
    amount: float
    expires_at: float


@dataclass(slots=True)
class _Counter:
    """Used amount, live reservations by id, and settled ids until they expire.

    ``expiries`` is a heap of (when, id, settled?) so pruning touches only what expired:
    a counter settles many requests a day, and scanning every settled id on each call
    would cost time in proportion to them. Entries of reservations settled before they
    expired stay in the heap until their time and are skipped then.

    ``reserved`` is kept as a running sum for the same reason, and set back to exactly 0
    whenever no reservation is left, so float rounding cannot pile up.
    """

    expires_at: float
    used: float = 0.0
    holds: dict[str, _Hold] = field(default_factory=dict)
    settled: dict[str, float] = field(default_factory=dict)
    expiries: list[tuple[float, str, bool]] = field(default_factory=list)
    reserved: float = 0.0

    def hold(self, hold_id: str, amount: float, until: float) -> None:
        self.holds[hold_id] = _Hold(amount, until)
        self.reserved += amount
        heapq.heappush(self.expiries, (until, hold_id, False))

    def release(self, hold_id: str) -> None:
        """Stop counting a reservation (settled or expired); nothing if it is not held."""
        hold = self.holds.pop(hold_id, None)
        if hold is None:
            return
        self.reserved = self.reserved - hold.amount if self.holds else 0.0

    def mark_settled(self, settled_id: str, until: float) -> None:
        self.settled[settled_id] = until
        heapq.heappush(self.expiries, (until, settled_id, True))

    def prune(self, now: float) -> None:
        """Forget reservations and settled ids that expired."""
        while self.expiries and self.expiries[0][0] <= now:
            _, item_id, settled = heapq.heappop(self.expiries)
            if settled:
                until = self.settled.get(item_id)
                if until is not None and until <= now:
                    del self.settled[item_id]
                continue
            hold = self.holds.get(item_id)
            if hold is not None and hold.expires_at <= now:
                self.release(item_id)


@dataclass(slots=True)
class _Rate:
    tat: float
    expires_at: float


class MemoryStore:
    """A :class:`~sidecar.state.store.CounterStore` in this process's memory."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S,
    ) -> None:
        check_reservation_ttl(reservation_ttl_s)
        self._clock = clock
        self._reservation_ttl_s = reservation_ttl_s
        self._entries: dict[str, _Counter | _Rate] = {}
        self._writes = 0

    @property
    def size(self) -> int:
        """Keys held, counting expired ones not swept yet (for metrics and tests)."""
        return len(self._entries)

    async def reserve(self, key: str, amount: float, limit: float, ttl_s: int) -> Reservation:
        check_key(key)
        check_amount(amount)
        check_limit(limit)
        check_ttl(ttl_s)
        now = self._clock()
        counter = self._counter(key, now)
        used, reserved = (counter.used, counter.reserved) if counter else (0.0, 0.0)
        if not fits(used, reserved, amount, limit):
            return Reservation(granted=False, used=used, reserved=reserved, id=None)
        counter = self._write(key, counter, ttl_s, now)
        hold_id = secrets.token_hex(12)
        hold_s = min(self._reservation_ttl_s, ttl_s)
        counter.hold(hold_id, amount, now + hold_s)
        return Reservation(granted=True, used=used, reserved=counter.reserved, id=hold_id)

    async def settle(self, key: str, reservation_id: str, actual: float, ttl_s: int) -> None:
        check_key(key)
        check_amount(actual, "actual")
        check_ttl(ttl_s)
        now = self._clock()
        counter = self._counter(key, now)
        if counter is not None and reservation_id in counter.settled:
            return
        counter = self._write(key, counter, ttl_s, now)
        counter.release(reservation_id)
        counter.used += actual
        counter.mark_settled(reservation_id, now + min(ttl_s, SETTLED_TTL_S))

    async def add(self, key: str, amount: float, ttl_s: int) -> float:
        check_key(key)
        check_amount(amount)
        check_ttl(ttl_s)
        now = self._clock()
        counter = self._write(key, self._counter(key, now), ttl_s, now)
        counter.used += amount
        return counter.used

    async def read(self, key: str) -> Usage:
        check_key(key)
        counter = self._counter(key, self._clock())
        if counter is None:
            return Usage(used=0.0, reserved=0.0)
        return Usage(used=counter.used, reserved=counter.reserved)

    async def hit(
        self, key: str, limit: int, window_s: int, now_s: float, cost: int = 1
    ) -> RateDecision:
        check_key(key)
        gcra.check_rate_args(limit, window_s, cost)
        now = self._clock()
        rate = self._rate(key, now)
        result = gcra.step(rate.tat if rate else None, limit, window_s, now_s, cost)
        if result.tat is not None:
            self._entries[key] = _Rate(result.tat, now + (result.tat - now_s))
            self._count_write(now)
        return result.decision

    async def close(self) -> None:
        """Nothing to release: the counters live as long as the object."""

    def settled_ids(self, key: str) -> int:
        """How many settled ids the counter still remembers (for tests and the state view)."""
        entry = self._entries.get(key)
        return len(entry.settled) if isinstance(entry, _Counter) else 0

    def take_used(self, key: str) -> float:
        """Zero a counter's used amount and return what it was (0 if the key is absent).

        Its live reservations stay, and so do its settled ids, so settling one of them
        again still changes nothing. For moving usage elsewhere: the guarded store pushes
        what it counted locally to the shared store this way.
        """
        check_key(key)
        counter = self._counter(key, self._clock())
        if counter is None:
            return 0.0
        used, counter.used = counter.used, 0.0
        return used

    def _live(self, key: str, now: float) -> _Counter | _Rate | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= now:
            del self._entries[key]
            return None
        return entry

    def _counter(self, key: str, now: float) -> _Counter | None:
        entry = self._live(key, now)
        if isinstance(entry, _Rate):
            raise KeyKindError(f"{key!r} is a rate limiter, not a counter")
        if entry is not None:
            entry.prune(now)
        return entry

    def _rate(self, key: str, now: float) -> _Rate | None:
        entry = self._live(key, now)
        if isinstance(entry, _Counter):
            raise KeyKindError(f"{key!r} is a counter, not a rate limiter")
        return entry

    def _write(self, key: str, counter: _Counter | None, ttl_s: int, now: float) -> _Counter:
        """``counter`` (created if absent) with its lifetime renewed to ``ttl_s``."""
        if counter is None:
            counter = self._entries[key] = _Counter(expires_at=now)
        counter.expires_at = now + ttl_s
        self._count_write(now)
        return counter

    def _count_write(self, now: float) -> None:
        self._writes += 1
        if self._writes % SWEEP_EVERY == 0:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        for key in [k for k, entry in self._entries.items() if entry.expires_at <= now]:
            del self._entries[key]
