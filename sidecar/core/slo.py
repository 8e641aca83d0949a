"""Error-budget burn of each virtual model's SLO, and the flag it switches.

A :class:`BurnWindow` counts good and bad requests in one-second buckets over a sliding
window. The burn rate is the window's bad fraction divided by the error budget
(1 - objective): 1 spends the budget exactly over the SLO period, 14.4 spends 2 % of
a 30-day budget in an hour. :class:`SloBoard` asks for the model's flag to be on when
both the short and the long window burn at the policy's rate or more (the short one
with enough requests to judge), and off when the short window falls back under it.
Pure: ``now`` comes from the caller.
"""

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sidecar.domain.ids import ModelName
from sidecar.domain.slo import SloSpec


@dataclass
class BurnWindow:
    """Good and bad requests of the last ``span_s`` seconds, in one-second buckets."""

    span_s: float
    _buckets: deque[list[int]] = field(default_factory=deque)
    """[second, requests, bad] per second that saw a request, oldest first."""
    requests: int = 0
    bad: int = 0

    def add(self, bad: bool, now: float) -> None:
        second = math.floor(now)
        if self._buckets and self._buckets[-1][0] == second:
            bucket = self._buckets[-1]
        else:
            bucket = [second, 0, 0]
            self._buckets.append(bucket)
        bucket[1] += 1
        bucket[2] += int(bad)
        self.requests += 1
        self.bad += int(bad)
        self.prune(now)

    def prune(self, now: float) -> None:
        oldest = math.floor(now - self.span_s)
        while self._buckets and self._buckets[0][0] <= oldest:
            _, requests, bad = self._buckets.popleft()
            self.requests -= requests
            self.bad -= bad

    def burn_rate(self, budget: float) -> float:
        if self.requests == 0:
            return 0.0
        return (self.bad / self.requests) / budget


_LADDER_RUNGS = frozenset({"cache", "degraded", "queued"})


def request_was_bad(
    outcome: str, status: int | None, ttfb_s: float | None, latency_s: float | None
) -> bool | None:
    """Whether a finished request spent error budget; None: it does not count.

    Bad: a server error (5xx, the sidecar's included), shed, answered from the
    degradation ladder, or slower than ``latency_s`` to its first byte. Not counted:
    client errors and requests the client gave up on.
    """
    if outcome in ("shed", "error") or outcome in _LADDER_RUNGS:
        return True
    if outcome in ("rejected", "cancelled") or status is None:
        return None
    if status >= 500:
        return True
    if status >= 400:
        return None
    return latency_s is not None and ttfb_s is not None and ttfb_s > latency_s


@dataclass(frozen=True, slots=True)
class SloVerdict:
    """The flag an SLO wants switched, which way, and why."""

    model: ModelName
    flag: str
    on: bool
    reason: str


@dataclass
class _Tracker:
    spec: SloSpec
    short: BurnWindow
    long: BurnWindow
    burning: bool = False


class SloBoard:
    """The SLOs of one policy's virtual models."""

    def __init__(self, slos: dict[ModelName, SloSpec]) -> None:
        self._trackers = {
            model: _Tracker(spec, BurnWindow(spec.short_window_s), BurnWindow(spec.long_window_s))
            for model, spec in slos.items()
        }

    def observe(self, model: ModelName, bad: bool, now: float) -> SloVerdict | None:
        """Count a finished request of ``model``; a verdict when its flag should switch."""
        tracker = self._trackers.get(model)
        if tracker is None:
            return None
        tracker.short.add(bad, now)
        tracker.long.add(bad, now)
        spec = tracker.spec
        budget = 1.0 - spec.objective
        short, long = tracker.short.burn_rate(budget), tracker.long.burn_rate(budget)
        enough = tracker.short.requests >= spec.minimum_requests
        if not tracker.burning and enough and short >= spec.burn_rate and long >= spec.burn_rate:
            tracker.burning = True
            reason = _reason("burning its error budget", short, long, spec)
            return SloVerdict(model, spec.flag, True, reason)
        if tracker.burning and short < spec.burn_rate:
            tracker.burning = False
            return SloVerdict(model, spec.flag, False, _reason("burn subsided", short, long, spec))
        return None

    def carry_over(self, earlier: "SloBoard") -> None:
        """Keep the windows of every SLO that did not change.

        A changed one that was burning starts burning, so that its flag goes off once
        the new windows recover.
        """
        for model, tracker in self._trackers.items():
            kept = earlier._trackers.get(model)
            if kept is not None and kept.spec == tracker.spec:
                self._trackers[model] = kept
            elif kept is not None and kept.burning and kept.spec.flag == tracker.spec.flag:
                # Its flag is on: the new windows must be able to switch it off again.
                tracker.burning = True

    def snapshot(self, now: float) -> dict[str, Any]:
        view: dict[str, Any] = {}
        for model, tracker in self._trackers.items():
            budget = 1.0 - tracker.spec.objective
            tracker.short.prune(now)
            tracker.long.prune(now)
            view[model] = {
                "objective": tracker.spec.objective,
                "flag": tracker.spec.flag,
                "burning": tracker.burning,
                "short_burn_rate": round(tracker.short.burn_rate(budget), 3),
                "long_burn_rate": round(tracker.long.burn_rate(budget), 3),
                "short_window_requests": tracker.short.requests,
            }
        return view


def _reason(what: str, short: float, long: float, spec: SloSpec) -> str:
    return (
        f"SLO {spec.objective:.3%}: {what} (burn rate {short:.2f} over "
        f"{spec.short_window_s:g}s, {long:.2f} over {spec.long_window_s:g}s; "
        f"threshold {spec.burn_rate:g})"
    )
