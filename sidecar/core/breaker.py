"""Circuit breakers for model clusters, fed by outcomes the sidecar observes.

One :class:`CircuitBreaker` per cluster. It judges the recent calls in a sliding
window (the last N calls, or the calls of the last N seconds) once at least
``minimum_calls`` are in it: a failure rate or a slow-call rate at or over its
threshold opens the breaker. Open, it refuses calls for a wait that grows with each
trip in a row (capped); then it lets a few trial calls through (half-open) and closes
or opens again on their results.

Outcomes arrive late, when a response's headers come back. Each admission carries
the breaker's *generation* (it changes on every transition), so an outcome that
belongs to an earlier state is recognised and ignored: a slow response admitted
before a trip can never reopen, or close, the breaker after it.

Pure: time comes in as ``now`` (monotonic seconds); transitions come back as values.
"""

import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from sidecar.domain.ids import ClusterName
from sidecar.domain.resilience import BreakerConfig


class BreakerState(Enum):
    """Where a breaker is in its cycle."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_ALLOWED_TRANSITIONS = {
    BreakerState.CLOSED: frozenset({BreakerState.OPEN}),
    BreakerState.OPEN: frozenset({BreakerState.HALF_OPEN}),
    BreakerState.HALF_OPEN: frozenset({BreakerState.OPEN, BreakerState.CLOSED}),
}


FORCED_OPEN_RETRY_S = 30.0
"""The wait a client is told while an operator holds a breaker open."""


class IllegalTransitionError(RuntimeError):
    """A transition the state table does not allow: a bug, never an input error."""


@dataclass(frozen=True, slots=True)
class CallResult:
    """What one call came to, as far as the breaker cares."""

    failed: bool
    slow: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Permit:
    """An admitted call; report its outcome with it, or abandon it."""

    cluster: ClusterName
    generation: int
    trial: bool
    admitted_at: float


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of state, with the reason a person can read."""

    cluster: ClusterName
    old: BreakerState
    new: BreakerState
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to a call asking to go through."""

    permit: Permit | None
    transitions: tuple[Transition, ...] = ()
    retry_after_s: float = 0.0


class _Window(Protocol):
    def add(self, result: CallResult, now: float) -> None: ...
    def totals(self, now: float) -> tuple[int, int, int]: ...
    def clear(self) -> None: ...


class CountWindow:
    """The last ``size`` calls."""

    def __init__(self, size: int) -> None:
        self._calls: deque[CallResult] = deque(maxlen=size)

    def add(self, result: CallResult, now: float) -> None:
        self._calls.append(result)

    def totals(self, now: float) -> tuple[int, int, int]:
        failures = sum(1 for call in self._calls if call.failed)
        slow = sum(1 for call in self._calls if call.slow)
        return len(self._calls), failures, slow

    def clear(self) -> None:
        self._calls.clear()


class TimeWindow:
    """The calls of the last ``seconds`` seconds, in one-second buckets."""

    def __init__(self, seconds: int) -> None:
        self._seconds = seconds
        self._buckets: deque[list[int]] = deque()  # [second, calls, failures, slow]

    def add(self, result: CallResult, now: float) -> None:
        second = int(now)
        self._evict(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += int(result.failed)
        bucket[3] += int(result.slow)

    def totals(self, now: float) -> tuple[int, int, int]:
        self._evict(now)
        calls = sum(bucket[1] for bucket in self._buckets)
        failures = sum(bucket[2] for bucket in self._buckets)
        slow = sum(bucket[3] for bucket in self._buckets)
        return calls, failures, slow

    def clear(self) -> None:
        self._buckets.clear()

    def _evict(self, now: float) -> None:
        oldest_kept = int(now) - self._seconds + 1
        while self._buckets and self._buckets[0][0] < oldest_kept:
            self._buckets.popleft()


def _window_for(config: BreakerConfig) -> _Window:
    if config.window_kind == "time":
        return TimeWindow(config.window_size)
    return CountWindow(config.window_size)


@dataclass
class _Trials:
    """Half-open bookkeeping: trial calls out, and the results of those back."""

    outstanding: int = 0
    results: list[CallResult] = field(default_factory=list)


class CircuitBreaker:
    """The breaker of one cluster. See the module docstring for its semantics."""

    def __init__(self, cluster: ClusterName, config: BreakerConfig) -> None:
        self.cluster = cluster
        self.config = config
        self.state = BreakerState.CLOSED
        self.generation = 0
        self.consecutive_trips = 0
        self.open_until = 0.0
        self.stale_outcomes = 0
        self.last_reason = "initial state"
        self.forced: BreakerState | None = None
        """OPEN or CLOSED while an operator holds the breaker there; None: it judges."""
        self._window = _window_for(config)
        self._trials = _Trials()

    def force(self, state: BreakerState | None, reason: str, now: float) -> tuple[Transition, ...]:
        """Hold the breaker open or closed (an operator's call), or let it judge again (None).

        Held open, it admits nothing; held closed, it admits every call and never trips.
        Letting go starts it closed with an empty window. The move is a transition like
        any other, with ``reason`` (any state to any state: the operator decides).
        """
        self.forced = state
        target = state or BreakerState.CLOSED
        if target is BreakerState.OPEN:
            self.open_until = math.inf
        if self.state is target:
            self._window.clear()  # judging starts again from nothing
            return ()
        return (self._move(target, reason, now, forced=True),)

    def admit(self, now: float) -> Admission:
        """Let a call through (with a permit), or refuse it while open."""
        transitions: list[Transition] = []
        if self.forced is BreakerState.OPEN:
            return Admission(None, retry_after_s=FORCED_OPEN_RETRY_S)
        if self.state is BreakerState.OPEN:
            if now < self.open_until:
                return Admission(None, retry_after_s=self.open_until - now)
            wait = self.current_wait_s()
            transitions.append(
                self._move(BreakerState.HALF_OPEN, f"open wait of {wait:g}s elapsed", now)
            )
        if self.state is BreakerState.HALF_OPEN:
            trials = self._trials
            if trials.outstanding + len(trials.results) >= self.config.half_open_trials:
                return Admission(None, tuple(transitions), retry_after_s=1.0)
            trials.outstanding += 1
            return Admission(self._permit(now, trial=True), tuple(transitions))
        return Admission(self._permit(now, trial=False), tuple(transitions))

    def would_admit(self, now: float) -> bool:
        """Whether :meth:`admit` would give a permit now, without taking one."""
        if self.forced is not None:
            return self.forced is BreakerState.CLOSED
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return now >= self.open_until and self.config.half_open_trials > 0
        trials = self._trials
        return trials.outstanding + len(trials.results) < self.config.half_open_trials

    def record(self, permit: Permit, result: CallResult, now: float) -> tuple[Transition, ...]:
        """Count the outcome of an admitted call; stale outcomes are ignored."""
        if permit.generation != self.generation:
            self.stale_outcomes += 1
            return ()
        if self.state is BreakerState.HALF_OPEN:
            return self._record_trial(result, now)
        self._window.add(result, now)
        if self.forced is not None:
            return ()
        return self._judge_window(now)

    def abandon(self, permit: Permit) -> None:
        """Forget a call that ended without an outcome (cancelled before any answer)."""
        if permit.generation == self.generation and permit.trial:
            self._trials.outstanding -= 1

    def current_wait_s(self) -> float:
        """The open wait of the current (or next) trip: grows with trips in a row, capped."""
        trips = max(self.consecutive_trips, 1)
        wait = self.config.open_wait_s * self.config.wait_multiplier ** (trips - 1)
        return min(wait, self.config.max_open_wait_s)

    def rates(self, now: float) -> tuple[int, float, float]:
        """Calls in the window, and their failure and slow-call rates (0..1)."""
        calls, failures, slow = self._window.totals(now)
        if calls == 0:
            return 0, 0.0, 0.0
        return calls, failures / calls, slow / calls

    def _judge_window(self, now: float) -> tuple[Transition, ...]:
        calls, failure_rate, slow_rate = self.rates(now)
        if calls < self.config.minimum_calls:
            return ()
        if failure_rate >= self.config.failure_rate_threshold:
            reason = (
                f"failure rate {failure_rate:.0%} >= {self.config.failure_rate_threshold:.0%} "
                f"over {calls} calls"
            )
            return (self._trip(reason, now),)
        if slow_rate >= self.config.slow_call_rate_threshold:
            reason = (
                f"slow-call rate {slow_rate:.0%} >= {self.config.slow_call_rate_threshold:.0%} "
                f"over {calls} calls (slower than {self.config.slow_call_s:g}s)"
            )
            return (self._trip(reason, now),)
        return ()

    def _record_trial(self, result: CallResult, now: float) -> tuple[Transition, ...]:
        trials = self._trials
        trials.outstanding -= 1
        trials.results.append(result)
        needed = self.config.half_open_trials
        bad = sum(1 for trial in trials.results if trial.failed or trial.slow)
        if bad / needed >= self.config.failure_rate_threshold:
            return (self._trip(f"{bad} of {needed} trial calls failed or were slow", now),)
        if len(trials.results) >= needed:
            self.consecutive_trips = 0
            reason = f"{needed - bad} of {needed} trial calls succeeded"
            return (self._move(BreakerState.CLOSED, reason, now),)
        return ()

    def _trip(self, reason: str, now: float) -> Transition:
        self.consecutive_trips += 1
        self.open_until = now + self.current_wait_s()
        return self._move(BreakerState.OPEN, reason, now)

    def _move(self, new: BreakerState, reason: str, now: float, forced: bool = False) -> Transition:
        old = self.state
        if not forced and new not in _ALLOWED_TRANSITIONS[old]:
            raise IllegalTransitionError(f"{self.cluster}: {old.value} -> {new.value} ({reason})")
        self.state = new
        self.generation += 1
        self.last_reason = reason
        self._window.clear()
        self._trials = _Trials()
        return Transition(self.cluster, old, new, reason, now)

    def _permit(self, now: float, trial: bool) -> Permit:
        return Permit(self.cluster, self.generation, trial, now)
