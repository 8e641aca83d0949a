"""The counter store: shared accounting for budgets and rate limits.

A :class:`CounterStore` keeps, per key, a *used* amount and the *reserved* amounts of
requests still in flight. Admission reserves an estimate against a limit
(:meth:`~CounterStore.reserve`); when the response ends, :meth:`~CounterStore.settle`
replaces that reservation by what was really used. Because a reservation is granted
only if ``used + reserved + amount <= limit``, concurrent requests can overshoot a
budget by no more than what their estimates under-counted.

Lifetimes:

- Every write sets the key's time to live to ``ttl_s`` (whole seconds): callers pass the
  time left in the key's window (a day, a month) plus some grace, so a window's keys go
  away with it. A read never extends it.
- A reservation is held for the store's ``reservation_ttl_s`` (a constructor argument,
  :data:`DEFAULT_RESERVATION_TTL_S` by default), or ``ttl_s`` if that is shorter. After
  that it stops counting as reserved: a request that never settles (its sidecar crashed)
  frees its estimate by itself.
- Settling is idempotent per reservation id for :data:`SETTLED_TTL_S` (or the key's
  life, if shorter): a second settle of the same id within that time changes nothing.
  Settled ids are forgotten after it, so a busy counter keeps about an hour of them,
  not its whole window's. Settling an id the store does not hold (the
  reservation expired, or the key did) still adds ``actual`` to used, since the usage
  happened; the id is then remembered as settled like any other.

Rate limits (:meth:`~CounterStore.hit`) use GCRA (see :mod:`sidecar.state.gcra`): a key
holds one timestamp, and ``limit`` hits (or cost units) are allowed per ``window_s``,
all at once if they come in a burst. The caller passes ``now_s``; replicas sharing a
store must pass the same clock (wall-clock seconds, ``time.time()``).

A key is either a counter (reserve, settle, add, read) or a rate limiter (hit); using
one key as both raises :class:`KeyKindError`. Keys ending in :data:`RESERVED_SUFFIX` are
the store's own and rejected. Every call may raise :class:`StoreUnavailable` when the
backing service cannot answer in time; nothing else is raised for an outage, so one
guard (a circuit breaker with a local fallback) covers every call.
"""

import math
from dataclasses import dataclass
from typing import Protocol

DEFAULT_RESERVATION_TTL_S = 900.0
"""How long a reservation counts if never settled: longer than any one generation."""

SETTLED_TTL_S = 3600
"""How long a settled reservation id is remembered, so that a retried settle counts once.

Longer than any retry of a settle (a guarded store replays queued settles as soon as
the shared store answers again); each remembered id costs the shared store about
120 bytes, so this also bounds its memory: a counter settling 100 requests a second
holds about 40 MB of them.
"""

RESERVED_SUFFIX = ":holds"
"""Stores may keep a key's reservations under ``<key>:holds``: callers may not use it."""

FLOAT_TOLERANCE = 1e-9
"""Absolute slack when comparing sums of amounts to a limit (0.1 + 0.2 fits 0.3)."""


class StoreUnavailable(Exception):  # noqa: N818 - the name the resilience layer expects
    """The store could not answer: connection refused or lost, or a timeout."""


class KeyKindError(ValueError):
    """A key used as a counter and as a rate limiter."""


@dataclass(frozen=True, slots=True)
class Usage:
    """A counter's state: what was used, and what in-flight requests reserved."""

    used: float
    reserved: float


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer to a reservation: granted or not, and the counter after the decision.

    ``id`` names the reservation for :meth:`CounterStore.settle`; it is ``None`` when the
    reservation was refused. ``reserved`` includes this reservation when granted.
    """

    granted: bool
    used: float
    reserved: float
    id: str | None


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The answer to a rate-limited hit.

    ``remaining`` is how many more unit hits would be allowed right now;
    ``retry_after_s`` is 0 when allowed, else the wait until the same hit would be
    allowed (``math.inf`` if it never can: its cost exceeds the limit).
    """

    allowed: bool
    remaining: int
    retry_after_s: float


class CounterStore(Protocol):
    """Atomic counters with reservations, and rate limiters, shared by replicas."""

    async def reserve(self, key: str, amount: float, limit: float, ttl_s: int) -> Reservation:
        """Reserve ``amount`` if ``used + reserved + amount <= limit`` (limit may be inf)."""
        ...

    async def settle(self, key: str, reservation_id: str, actual: float, ttl_s: int) -> None:
        """Replace a reservation by the ``actual`` amount used (0 when cancelled)."""
        ...

    async def add(self, key: str, amount: float, ttl_s: int) -> float:
        """Add ``amount`` to used, with no reservation; the new used amount."""
        ...

    async def read(self, key: str) -> Usage:
        """The counter's used and (unexpired) reserved amounts; zeros if absent."""
        ...

    async def hit(
        self, key: str, limit: int, window_s: int, now_s: float, cost: int = 1
    ) -> RateDecision:
        """Count a hit of ``cost`` against ``limit`` per ``window_s`` if it is allowed."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


def check_key(key: str) -> None:
    """Reject keys a store cannot own."""
    if not key:
        raise ValueError("a store key may not be empty")
    if key.endswith(RESERVED_SUFFIX):
        raise ValueError(f"store keys may not end in {RESERVED_SUFFIX!r}: {key!r}")


def check_amount(amount: float, what: str = "amount") -> None:
    """Reject amounts that are negative, infinite or not numbers."""
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"{what} must be a finite number >= 0, not {amount!r}")


def check_limit(limit: float) -> None:
    """Reject limits below zero (``math.inf`` is no limit)."""
    if math.isnan(limit) or limit < 0:
        raise ValueError(f"limit must be >= 0 or math.inf, not {limit!r}")


def check_ttl(ttl_s: int) -> None:
    """Reject key lifetimes under one second."""
    if ttl_s < 1:
        raise ValueError(f"ttl_s must be at least 1 second, not {ttl_s!r}")


def check_reservation_ttl(reservation_ttl_s: float) -> None:
    """Reject reservation lifetimes that are not positive."""
    if not reservation_ttl_s > 0:
        raise ValueError(f"reservation_ttl_s must be > 0, not {reservation_ttl_s!r}")


def fits(used: float, reserved: float, amount: float, limit: float) -> bool:
    """Whether ``amount`` more stays within ``limit``, with float slack."""
    return used + reserved + amount <= limit + FLOAT_TOLERANCE
