"""GCRA, the generic cell rate algorithm: rate limiting with one timestamp per key.

``limit`` units per ``window_s`` means one unit every ``interval = window_s / limit``
seconds. The key keeps the *theoretical arrival time* (TAT): when the limiter would be
empty again if nothing else came. A hit of ``cost`` units moves it ``cost * interval``
later, and is allowed if the new TAT is at most ``window_s`` ahead of now, so a quiet
key takes a burst of ``limit`` units at once, then one unit per interval: a sliding
window with no per-hit bookkeeping.

The Redis store runs the same arithmetic in Lua (:mod:`sidecar.state.scripts`); both
compare times with :data:`TIME_TOLERANCE_S` of slack, because wall-clock timestamps
near 1.7e9 s carry only about 0.2 µs of float precision.
"""

import math
from dataclasses import dataclass

from sidecar.state.store import RateDecision

TIME_TOLERANCE_S = 1e-4
"""Slack in seconds when comparing times: float rounding must not deny a hit."""

NEVER = RateDecision(allowed=False, remaining=0, retry_after_s=math.inf)
"""The answer for a limit of zero: nothing is ever allowed."""


@dataclass(frozen=True, slots=True)
class GcraStep:
    """A decision and the TAT to store after it (``None``: leave the key alone)."""

    decision: RateDecision
    tat: float | None


def step(tat: float | None, limit: int, window_s: float, now_s: float, cost: int) -> GcraStep:
    """Decide a hit of ``cost`` at ``now_s`` on a key whose stored TAT is ``tat``."""
    if limit <= 0:
        return GcraStep(NEVER, None)
    interval = window_s / limit
    start = now_s if tat is None else max(tat, now_s)
    if cost > limit:
        return GcraStep(_denied(start, now_s, window_s, interval, math.inf), None)
    new_tat = start + cost * interval
    allow_at = new_tat - window_s
    if allow_at > now_s + TIME_TOLERANCE_S:
        return GcraStep(_denied(start, now_s, window_s, interval, allow_at - now_s), None)
    remaining = _room(new_tat, now_s, window_s, interval)
    return GcraStep(RateDecision(True, remaining, 0.0), new_tat)


def _denied(
    tat: float, now_s: float, window_s: float, interval: float, retry_after_s: float
) -> RateDecision:
    return RateDecision(False, _room(tat, now_s, window_s, interval), retry_after_s)


def _room(tat: float, now_s: float, window_s: float, interval: float) -> int:
    """How many unit hits still fit before ``tat`` would be a window ahead of now."""
    return max(0, math.floor((now_s + window_s - tat + TIME_TOLERANCE_S) / interval))


def check_rate_args(limit: int, window_s: int, cost: int) -> None:
    """Reject windows that are not positive and costs below one."""
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, not {window_s!r}")
    if cost < 1:
        raise ValueError(f"cost must be >= 1, not {cost!r}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit!r}")
