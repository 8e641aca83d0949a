"""Live latency per cluster: p50 and p95 of time to first token and of total time.

Each cluster keeps its last :data:`MAX_SAMPLES` answered calls of the last
``window_s`` seconds; quantiles are exact over those samples (nearest rank), worked out
when asked and kept until the next sample. Bounded in memory and in the work per call,
and pure: ``now`` comes from the caller, so a fake clock tests it.
"""

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_SAMPLES = 256
DEFAULT_WINDOW_S = 300.0


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Quantiles of one cluster's recent calls, in seconds (None: no sample)."""

    samples: int
    ttft_p50: float | None
    ttft_p95: float | None
    total_p50: float | None
    total_p95: float | None


@dataclass
class _Cluster:
    samples: deque[tuple[float, float, float]] = field(
        default_factory=lambda: deque(maxlen=MAX_SAMPLES)
    )
    """(when, time to first token, total time), oldest first."""
    summary: LatencySummary | None = None


def nearest_rank(sorted_values: list[float], quantile: float) -> float | None:
    """The ``quantile`` (0..1) of ``sorted_values`` by nearest rank; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(quantile * len(sorted_values)))
    return sorted_values[rank - 1]


class LatencyBoard:
    """Recent latency of every cluster of one policy."""

    def __init__(self, clusters: list[str], window_s: float = DEFAULT_WINDOW_S) -> None:
        self._window_s = window_s
        self._clusters = {name: _Cluster() for name in clusters}

    def observe(self, cluster: str, ttft_s: float, total_s: float, now: float) -> None:
        """Count one answered call of ``cluster``."""
        state = self._clusters.get(cluster)
        if state is None:
            return
        state.samples.append((now, ttft_s, total_s))
        state.summary = None

    def summary(self, cluster: str, now: float) -> LatencySummary:
        """The cluster's quantiles over its samples of the last window."""
        state = self._clusters[cluster]
        horizon = now - self._window_s
        while state.samples and state.samples[0][0] < horizon:
            state.samples.popleft()
            state.summary = None
        if state.summary is None:
            ttft = sorted(sample[1] for sample in state.samples)
            total = sorted(sample[2] for sample in state.samples)
            state.summary = LatencySummary(
                len(ttft),
                nearest_rank(ttft, 0.5),
                nearest_rank(ttft, 0.95),
                nearest_rank(total, 0.5),
                nearest_rank(total, 0.95),
            )
        return state.summary

    def carry_over(self, earlier: "LatencyBoard") -> None:
        """Keep the samples of every cluster that is still there."""
        for name in self._clusters:
            kept = earlier._clusters.get(name)
            if kept is not None:
                self._clusters[name] = kept

    def snapshot(self, now: float) -> dict[str, Any]:
        view = {}
        for name in self._clusters:
            summary = self.summary(name, now)
            view[name] = {
                "samples": summary.samples,
                "ttft_p50_s": _rounded(summary.ttft_p50),
                "ttft_p95_s": _rounded(summary.ttft_p95),
                "total_p50_s": _rounded(summary.total_p50),
                "total_p95_s": _rounded(summary.total_p95),
            }
        return view


def _rounded(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None
