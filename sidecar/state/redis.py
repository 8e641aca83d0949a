"""The shared counter store: counters in Redis, one Lua script per operation.

:class:`RedisStore` lets several sidecar replicas account against the same budgets and
rate limits. Each operation is a single ``EVALSHA`` (falling back to ``EVAL`` when the
server does not have the script cached, e.g. after a restart), so it is atomic and one
round trip. Keys are ``<namespace>:<key>`` (and ``<namespace>:<key>:holds`` for a
counter's reservations; see :mod:`sidecar.state.scripts`); they are not hash-tagged,
so the store wants a single Redis (or a primary behind Sentinel), not Redis Cluster.

Reservation expiry follows the Redis server's clock, so replicas need not agree on time
for budgets; rate limits use the ``now_s`` callers pass.

Every call finishes within ``timeout_s`` or raises :class:`StoreUnavailable`, as do
refused or lost connections, a server that cannot take writes (loading, read-only
replica, out of memory) and every other error reply but ``WRONGTYPE`` (a database
index out of range, a user not allowed to run scripts). The client retries a failed
command once at once (a pooled connection that went stale when Redis restarted), within
that same deadline.
"""

import asyncio
import math
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from sidecar.state import gcra, scripts
from sidecar.state.store import (
    DEFAULT_RESERVATION_TTL_S,
    FLOAT_TOLERANCE,
    RESERVED_SUFFIX,
    SETTLED_TTL_S,
    KeyKindError,
    RateDecision,
    Reservation,
    StoreUnavailable,
    Usage,
    check_amount,
    check_key,
    check_limit,
    check_reservation_ttl,
    check_ttl,
)

DEFAULT_TIMEOUT_S = 0.25
"""How long one call may take, connecting included, before it counts as an outage."""


class RedisStore:
    """A :class:`~sidecar.state.store.CounterStore` in Redis, shared by replicas."""

    def __init__(
        self,
        url: str,
        namespace: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S,
    ) -> None:
        if not namespace:
            raise ValueError("a Redis store needs a namespace")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, not {timeout_s!r}")
        check_reservation_ttl(reservation_ttl_s)
        self.namespace = namespace
        self._where = describe_url(url)
        self._timeout_s = timeout_s
        self._reservation_ttl_s = reservation_ttl_s
        self._client: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )

    async def reserve(self, key: str, amount: float, limit: float, ttl_s: int) -> Reservation:
        check_key(key)
        check_amount(amount)
        check_limit(limit)
        check_ttl(ttl_s)
        hold_id = secrets.token_hex(12)
        hold_ms = math.ceil(min(self._reservation_ttl_s, ttl_s) * 1000)
        limit_arg = "inf" if math.isinf(limit) else repr(float(limit))
        args = (repr(float(amount)), limit_arg, ttl_s, hold_ms, hold_id, FLOAT_TOLERANCE)
        granted, used, reserved = await self._run(scripts.RESERVE, self._counter_keys(key), args)
        return Reservation(
            granted=bool(granted),
            used=float(used),
            reserved=float(reserved),
            id=hold_id if granted else None,
        )

    async def settle(self, key: str, reservation_id: str, actual: float, ttl_s: int) -> None:
        check_key(key)
        check_amount(actual, "actual")
        check_ttl(ttl_s)
        args = (reservation_id, repr(float(actual)), ttl_s, min(ttl_s, SETTLED_TTL_S))
        await self._run(scripts.SETTLE, self._counter_keys(key), args)

    async def add(self, key: str, amount: float, ttl_s: int) -> float:
        check_key(key)
        check_amount(amount)
        check_ttl(ttl_s)
        args = (repr(float(amount)), ttl_s)
        return float(await self._run(scripts.ADD, self._counter_keys(key), args))

    async def read(self, key: str) -> Usage:
        check_key(key)
        used, reserved = await self._run(scripts.READ, self._counter_keys(key), ())
        return Usage(used=float(used), reserved=float(reserved))

    async def hit(
        self, key: str, limit: int, window_s: int, now_s: float, cost: int = 1
    ) -> RateDecision:
        check_key(key)
        gcra.check_rate_args(limit, window_s, cost)
        if limit <= 0:
            return gcra.NEVER
        args = (limit, window_s, repr(float(now_s)), cost, gcra.TIME_TOLERANCE_S)
        allowed, remaining, retry_after = await self._run(scripts.HIT, (self._key(key),), args)
        return RateDecision(bool(allowed), int(remaining), float(retry_after))

    async def close(self) -> None:
        await self._client.aclose()

    def _key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def _counter_keys(self, key: str) -> tuple[str, str]:
        main = self._key(key)
        return main, main + RESERVED_SUFFIX

    async def _run(
        self, script: scripts.Script, keys: Sequence[str], args: Sequence[str | int | float]
    ) -> Any:
        """Run ``script`` within the deadline, with errors in the store's terms."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._eval(script, keys, args)
        except (RedisError, OSError) as exc:
            raise self._translate(exc, script) from exc

    async def _eval(
        self, script: scripts.Script, keys: Sequence[str], args: Sequence[str | int | float]
    ) -> Any:
        try:
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._client.eval(script.source, len(keys), *keys, *args)

    def _translate(self, exc: RedisError | OSError, script: scripts.Script) -> Exception:
        """The store's error for ``exc``: a key of the wrong kind, else unavailable.

        Every other error reply counts as an outage, not only lost connections: a
        database index out of range, a user without permission to run scripts, a
        server that is loading or out of memory. Requests must not fail because of the
        store; the guard answers locally and logs the reason.
        """
        if isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc):
            return KeyKindError(f"{script.name} on a key of another kind: {exc}")
        reason = str(exc) or type(exc).__name__
        return StoreUnavailable(f"Redis at {self._where} ({script.name}): {reason}")


def describe_url(url: str) -> str:
    """Where ``url`` points, without its credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
