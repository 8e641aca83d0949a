"""Time as the core sees it: a number of seconds passed in by the caller.

The core never reads a clock. Drivers pass ``now`` from a :class:`Clock`: the
monotonic clock in production, :class:`FakeClock` in tests, which advance it by hand
and narrate time ("advance 5 s: still open").
"""

import time
from typing import Protocol


class Clock(Protocol):
    """A source of monotonic seconds."""

    def now(self) -> float: ...


class MonotonicClock:
    """The process's monotonic clock."""

    def now(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds
