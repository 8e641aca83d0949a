"""What the benchmark reads around each measured run: CPU times and the sidecar's counters.

CPU times come from ``/proc``: ``/proc/<pid>/stat`` (``utime`` + ``stime`` of all the
process's threads, in clock ticks) for Envoy and the sidecar, ``/proc/stat`` for the
whole machine, and ``getrusage`` for wrk (a child of this process). The sidecar's
counters come from its Prometheus ``/metrics``; they show that every measured request
really took the routed path and had its usage read.
"""

import os
import resource
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) the process ``pid`` has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces: count fields after its ")".
    fields = stat.rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS_PER_S


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and of its live descendants (a sidecar and its workers)."""
    return sum(process_cpu_s(member) for member in _tree(pid))


def _tree(pid: int) -> list[int]:
    members = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            members += _tree(int(child))
    return members


def children_cpu_s() -> float:
    """CPU seconds used by this process's finished (waited-for) children, e.g. wrk."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class MachineCpu:
    """The machine's CPU time so far, in clock ticks over all CPUs."""

    busy: int
    total: int

    def busy_percent_since(self, earlier: "MachineCpu") -> float:
        """How busy the CPUs were between ``earlier`` and this reading (0-100)."""
        total = self.total - earlier.total
        return 100.0 * (self.busy - earlier.busy) / total if total > 0 else 0.0

    def busy_s_since(self, earlier: "MachineCpu") -> float:
        """CPU seconds spent busy, over all CPUs, between ``earlier`` and this reading."""
        return (self.busy - earlier.busy) / CLOCK_TICKS_PER_S


def machine_cpu() -> MachineCpu:
    """The first line of ``/proc/stat``: busy is everything but idle and iowait.

    Busy includes interrupts and, in a virtual machine, time stolen by the hypervisor.
    """
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    ticks = [int(value) for value in first[1:9]]
    idle = ticks[3] + ticks[4]
    return MachineCpu(busy=sum(ticks) - idle, total=sum(ticks))


# --- The sidecar's counters -------------------------------------------------------------------


@dataclass(frozen=True)
class _Counter:
    """One number from the scrape: the sum of a family's samples whose labels match."""

    family: str
    labels: Mapping[str, str]


SIDECAR_COUNTERS: Final = {
    "requests": _Counter("ai_sidecar_requests_total", {}),
    "routed": _Counter("ai_sidecar_requests_total", {"outcome": "routed"}),
    "input_tokens": _Counter("ai_sidecar_tokens_total", {"direction": "input"}),
    "fallbacks": _Counter("ai_sidecar_fallbacks_total", {}),
    "shed": _Counter("ai_sidecar_shed_total", {}),
    "errors": _Counter("ai_sidecar_errors_total", {}),
}
"""The counters :func:`sidecar_counters` reads, by the name the results use."""


def sidecar_counters(metrics_urls: Sequence[str]) -> dict[str, float]:
    """The :data:`SIDECAR_COUNTERS` now, summed over the scrapes of every worker."""
    samples = []
    for url in metrics_urls:
        with urllib.request.urlopen(url, timeout=5) as response:
            samples += list(_samples(response.read().decode()))
    return {
        name: sum(value for family, labels, value in samples if _matches(counter, family, labels))
        for name, counter in SIDECAR_COUNTERS.items()
    }


def counters_since(now: Mapping[str, float], earlier: Mapping[str, float]) -> dict[str, int]:
    """How much each counter grew between two readings."""
    return {name: round(now[name] - earlier.get(name, 0.0)) for name in now}


def _matches(counter: _Counter, family: str, labels: Mapping[str, str]) -> bool:
    return family == counter.family and all(
        labels.get(key) == value for key, value in counter.labels.items()
    )


def _samples(text: str) -> "list[tuple[str, dict[str, str], float]]":
    """``(family, labels, value)`` of every sample line (label values without escapes)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, label_text = head.partition("{")
        samples.append((name, _labels(label_text.removesuffix("}")), float(value)))
    return samples


def _labels(text: str) -> dict[str, str]:
    labels = {}
    for pair in filter(None, _split_pairs(text)):
        key, _, value = pair.partition("=")
        labels[key.strip()] = value.strip().strip('"')
    return labels


def _split_pairs(text: str) -> list[str]:
    """``a="x",b="y,z"`` -> ``['a="x"', 'b="y,z"']`` (commas inside quotes kept)."""
    pairs: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            pairs.append("".join(current))
            current = []
        else:
            current.append(char)
    pairs.append("".join(current))
    return pairs
