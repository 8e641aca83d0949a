"""The benchmark's results: one record per setup and concurrency, as tables and JSON.

Every record has the keys ``setup``, ``concurrency``, ``rps``, ``p50_ms``, ``p90_ms``,
``p99_ms``, ``envoy_cpu_us_per_req`` and ``sidecar_cpu_us_per_req``, plus what makes
the numbers checkable (request and error counts, the sidecar's own counters, how busy
the machine was) and, for the sidecar setups, the comparison with Envoy alone at the
same concurrency (``rps_ratio``, ``added_p50_ms``, ...).
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.setups import BASELINE


@dataclass
class Record:
    """The results of one measured run."""

    setup: str
    concurrency: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    envoy_cpu_us_per_req: float
    sidecar_cpu_us_per_req: float
    requests: int
    duration_s: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    upstream_cpu_us_per_req: float
    wrk_cpu_us_per_req: float
    machine_cpu_busy_pct: float
    other_cpus: float
    """CPUs busy with anything but Envoy, the sidecar, the upstream and wrk."""
    path: str
    sidecar_counters: dict[str, int]
    problems: list[str] = field(default_factory=list)
    rps_ratio: float | None = None
    added_p50_ms: float | None = None
    added_p90_ms: float | None = None
    added_p99_ms: float | None = None
    envoy_cpu_ratio: float | None = None

    def compare_with(self, baseline: "Record") -> None:
        """Fill in the ratios and added latencies against Envoy alone."""
        self.rps_ratio = _ratio(self.rps, baseline.rps)
        self.added_p50_ms = round(self.p50_ms - baseline.p50_ms, 3)
        self.added_p90_ms = round(self.p90_ms - baseline.p90_ms, 3)
        self.added_p99_ms = round(self.p99_ms - baseline.p99_ms, 3)
        self.envoy_cpu_ratio = _ratio(self.envoy_cpu_us_per_req, baseline.envoy_cpu_us_per_req)


def _ratio(value: float, baseline: float) -> float | None:
    return round(value / baseline, 3) if baseline > 0 else None


def add_comparisons(records: Sequence[Record]) -> None:
    """Compare every non-baseline record with the baseline at its concurrency."""
    baselines = {r.concurrency: r for r in records if r.setup == BASELINE}
    for record in records:
        baseline = baselines.get(record.concurrency)
        if record.setup != BASELINE and baseline is not None:
            record.compare_with(baseline)


def write_json(records: Sequence[Record], path: Path) -> None:
    path.write_text(json.dumps([asdict(r) for r in records], indent=2) + "\n")


# --- Tables --------------------------------------------------------------------------------

_RESULT_HEADER = (
    "setup",
    "concurrency",
    "req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "Envoy CPU µs/req",
    "sidecar CPU µs/req",
    "errors",
)
_COMPARISON_HEADER = (
    "setup",
    "concurrency",
    "req/s vs envoy",
    "added p50 ms",
    "added p90 ms",
    "added p99 ms",
    "p50 vs envoy",
    "p99 vs envoy",
    "Envoy CPU vs envoy",
    "Envoy + sidecar CPU µs/req",
)


def result_rows(records: Sequence[Record]) -> list[tuple[str, ...]]:
    return [
        (
            r.setup,
            str(r.concurrency),
            f"{r.rps:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p90_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.envoy_cpu_us_per_req:,.0f}",
            f"{r.sidecar_cpu_us_per_req:,.0f}",
            _errors(r),
        )
        for r in records
    ]


def comparison_rows(records: Sequence[Record]) -> list[tuple[str, ...]]:
    baselines = {r.concurrency: r for r in records if r.setup == BASELINE}
    rows: list[tuple[str, ...]] = []
    for r in records:
        base = baselines.get(r.concurrency)
        if r.setup == BASELINE or base is None:
            continue
        rows.append(
            (
                r.setup,
                str(r.concurrency),
                _times(r.rps_ratio),
                f"+{r.added_p50_ms:.2f}" if r.added_p50_ms is not None else "-",
                f"+{r.added_p90_ms:.2f}" if r.added_p90_ms is not None else "-",
                f"+{r.added_p99_ms:.2f}" if r.added_p99_ms is not None else "-",
                _times(_ratio(r.p50_ms, base.p50_ms)),
                _times(_ratio(r.p99_ms, base.p99_ms)),
                _times(r.envoy_cpu_ratio),
                f"{r.envoy_cpu_us_per_req + r.sidecar_cpu_us_per_req:,.0f}",
            )
        )
    return rows


_CPU_HEADER = (
    "setup",
    "concurrency",
    "Envoy CPUs",
    "sidecar CPUs",
    "upstream CPUs",
    "wrk CPUs",
    "other CPUs",
    "machine busy %",
)


def cpu_rows(records: Sequence[Record]) -> list[tuple[str, ...]]:
    """CPUs each process kept busy during the run (CPU µs per request times requests/s)."""

    def cpus(us_per_request: float, rps: float) -> str:
        return f"{us_per_request * rps / 1e6:.2f}"

    return [
        (
            r.setup,
            str(r.concurrency),
            cpus(r.envoy_cpu_us_per_req, r.rps),
            cpus(r.sidecar_cpu_us_per_req, r.rps),
            cpus(r.upstream_cpu_us_per_req, r.rps),
            cpus(r.wrk_cpu_us_per_req, r.rps),
            f"{r.other_cpus:.2f}",
            f"{r.machine_cpu_busy_pct:.0f}",
        )
        for r in records
    ]


def _times(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x"


def _errors(record: Record) -> str:
    failed = record.non_2xx + record.socket_errors
    return "0" if failed == 0 else f"{failed} (!)"


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned with spaces: the first left, numbers right."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(parts)

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    aligned = ["---"] + ["---:"] * (len(header) - 1)
    lines = [header, aligned, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def terminal_report(records: Sequence[Record]) -> str:
    parts = [text_table(_RESULT_HEADER, result_rows(records))]
    comparisons = comparison_rows(records)
    if comparisons:
        parts.append(text_table(_COMPARISON_HEADER, comparisons))
    parts.append(text_table(_CPU_HEADER, cpu_rows(records)))
    parts.extend(problem_lines(records))
    return "\n\n".join(parts)


def problem_lines(records: Sequence[Record]) -> list[str]:
    return [
        f"!!! {r.setup} at concurrency {r.concurrency}: {problem}"
        for r in records
        for problem in r.problems
    ]


def markdown_report(
    records: Sequence[Record],
    machine: Mapping[str, str],
    setups: Mapping[str, str],
    notes: Sequence[str],
) -> str:
    """``bench/results.md``: the machine, the setups, both tables and any problems."""
    problems = problem_lines(records)
    lines = ["# `make bench` results", ""]
    if problems:
        lines += ["**THIS RUN HAD ERRORS: its numbers are not comparable.**", ""]
        lines += [f"- {p.removeprefix('!!! ')}" for p in problems] + [""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    lines += ["", "Setups (all through the same front Envoy, `envoy/envoy.yaml`):", ""]
    lines += [f"- `{name}`: {description}" for name, description in setups.items()]
    lines += ["", "## Results", "", markdown_table(_RESULT_HEADER, result_rows(records))]
    comparisons = comparison_rows(records)
    if comparisons:
        lines += ["", "## Compared with Envoy alone (same concurrency, same run)", ""]
        lines += [markdown_table(_COMPARISON_HEADER, comparisons)]
    lines += ["", "## Where the CPU went (CPUs kept busy during the run)", ""]
    lines += [markdown_table(_CPU_HEADER, cpu_rows(records))]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
