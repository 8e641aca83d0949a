"""Shared state for budgets and rate limits: counters with reservations, rate limiters.

:class:`CounterStore` is the interface (:mod:`sidecar.state.store` explains its
semantics); :class:`MemoryStore` keeps state in this process, :class:`RedisStore` shares
it between replicas. Any call may raise :class:`StoreUnavailable`, and nothing else, when
the backing service is out. :class:`GuardedStore` wraps a shared store with a circuit
breaker and a local fallback, so its calls never raise it (:mod:`sidecar.state.guarded`
says how far budgets can overshoot meanwhile).
"""

from sidecar.state.guarded import GuardedSnapshot, GuardedStore
from sidecar.state.memory import MemoryStore
from sidecar.state.redis import RedisStore
from sidecar.state.store import (
    CounterStore,
    KeyKindError,
    RateDecision,
    Reservation,
    StoreUnavailable,
    Usage,
)

__all__ = [
    "CounterStore",
    "GuardedSnapshot",
    "GuardedStore",
    "KeyKindError",
    "MemoryStore",
    "RateDecision",
    "RedisStore",
    "Reservation",
    "StoreUnavailable",
    "Usage",
]
