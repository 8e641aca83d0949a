"""``make bench``: Envoy alone and Envoy with the sidecar, side by side, from one run.

One command starts the fake upstreams (an Envoy answering fixed JSON on 18000-18006),
the real sidecar with the demo policy (tracing on, with a ratio sampler, exporting to
a local OTLP sink; metrics always on) and the front Envoy with ``envoy/envoy.yaml``.
Then, for each concurrency, it drives each setup of :mod:`bench.setups` with wrk:
a warm-up, then a measured run, reading CPU times from ``/proc`` and the sidecar's
counters around the measured run only. It prints the results and writes them to
``bench/results.md`` and ``bench/results.json``.

It is not a test and asserts no timing. It does check that the numbers mean what they
say: a run with HTTP errors, socket errors, or requests the sidecar did not route as
expected is reported loudly, and the command then exits with status 1.

Usage: ``python -m bench.run [--duration S] [--warmup S] [--concurrency N ...]``.
"""

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Final

from bench.load import Load, LoadError, run_wrk, wrk_binary, wrk_version
from bench.otlp_sink import OtlpSink
from bench.probes import (
    MachineCpu,
    children_cpu_s,
    counters_since,
    machine_cpu,
    process_cpu_s,
    process_tree_cpu_s,
    sidecar_counters,
)
from bench.report import (
    Record,
    add_comparisons,
    markdown_report,
    problem_lines,
    terminal_report,
    write_json,
)
from bench.setups import PROMPT_TOKENS, SETUPS, Setup
from bench.stack import FRONT_URL, BenchError, BenchStack, Pids
from sidecar_demo.stack import StackError

REPO: Final = Path(__file__).resolve().parent.parent
BENCH_DIR: Final = REPO / "bench"
_OTHER_CPUS_LIMIT: Final = 0.3
"""CPUs busy with anything but the benchmark's processes above which a run is disturbed."""
_BUSY_BEFORE_PCT: Final = 15.0
"""How busy the machine may be before the benchmark starts without a warning."""
_SETTLE_S: Final = 0.5
"""Pause after each wrk run, for the sidecar to finish the streams wrk cut off."""


@dataclass(frozen=True)
class Options:
    duration_s: float
    warmup_s: float
    concurrencies: tuple[int, ...]
    threads: int
    setups: tuple[Setup, ...]
    sample_ratio: float
    out_dir: Path
    log_dir: Path
    workers: int = 1


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Envoy alone vs Envoy + sidecar under wrk; writes bench/results.{md,json}.",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 16], help="wrk connections"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (at most connections)")
    parser.add_argument(
        "--setups",
        nargs="+",
        choices=[setup.name for setup in SETUPS],
        default=[setup.name for setup in SETUPS],
    )
    parser.add_argument(
        "--sample-ratio", type=float, default=0.1, help="OTEL_TRACES_SAMPLER_ARG for the sidecar"
    )
    parser.add_argument("--out-dir", type=Path, default=BENCH_DIR, help="where results go")
    parser.add_argument("--log-dir", type=Path, default=BENCH_DIR / "logs", help="process logs")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="sidecar worker processes (serve --workers; above 1 they share a TCP port)",
    )
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 0 or min(args.concurrency) < 1 or args.threads < 1:
        parser.error("--duration must be >= 1, --warmup >= 0, --concurrency and --threads >= 1")
    return Options(
        duration_s=args.duration,
        warmup_s=args.warmup,
        concurrencies=tuple(args.concurrency),
        threads=args.threads,
        setups=tuple(setup for setup in SETUPS if setup.name in args.setups),
        sample_ratio=args.sample_ratio,
        out_dir=args.out_dir,
        log_dir=args.log_dir,
        workers=args.workers,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        records, machine, notes = run_benchmark(options)
    except (BenchError, StackError, LoadError, OSError) as error:
        print(f"\nmake bench: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmake bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    add_comparisons(records)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(records, options.out_dir / "results.json")
    described = {setup.name: setup.description for setup in options.setups}
    markdown = markdown_report(records, machine, described, notes)
    (options.out_dir / "results.md").write_text(markdown)
    print()
    print(terminal_report(records))
    print()
    print("\n".join(notes))
    print(f"\nWritten: {options.out_dir / 'results.md'}, {options.out_dir / 'results.json'}")
    problems = problem_lines(records)
    if problems:
        print(f"\nmake bench: {len(problems)} problem(s), see above: the numbers are suspect.")
        return 1
    return 0


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the stack's context manager


# --- The run ---------------------------------------------------------------------------------


def run_benchmark(options: Options) -> tuple[list[Record], dict[str, str], list[str]]:
    """Start everything, measure every setup at every concurrency, stop everything."""
    wrk_binary()  # fail before starting anything when wrk is missing
    _fresh_log_dir(options.log_dir)
    loads = {setup.name: _load_for(setup, options.log_dir) for setup in options.setups}
    runs = len(options.setups) * len(options.concurrencies)
    print(
        f"make bench: {runs} runs of {options.warmup_s:g}s warm-up + {options.duration_s:g}s "
        f"(about {runs * (options.warmup_s + options.duration_s + 1) + 5:.0f}s); "
        f"logs in {options.log_dir}",
        flush=True,
    )
    _warn_if_busy()
    sink = OtlpSink()
    sink.start()
    records: list[Record] = []
    try:
        env = _telemetry_env(sink.endpoint, options)
        with BenchStack(REPO, options.log_dir, env, options.workers) as stack:
            for setup in options.setups:
                print(f"  check {_smoke_test(setup)}", flush=True)
            for concurrency in options.concurrencies:
                for setup in options.setups:
                    record = _measure(stack, setup, loads[setup.name], concurrency, options)
                    records.append(record)
                    print(f"  [{len(records)}/{runs}] {_progress(record)}", flush=True)
            totals = sidecar_counters(stack.metrics_urls())
        # The sidecar has stopped, so its last spans are flushed to the sink.
        notes = _notes(options, sink, int(totals["requests"]))
    finally:
        sink.stop()
    return records, _machine(options), notes


def _warn_if_busy(sample_s: float = 1.0) -> None:
    """Say so when other work already keeps the CPUs busy: every number would suffer."""
    before = machine_cpu()
    time.sleep(sample_s)
    busy = machine_cpu().busy_percent_since(before)
    if busy > _BUSY_BEFORE_PCT:
        print(
            f"make bench: WARNING: the machine is already {busy:.0f} % busy before the "
            "benchmark starts; results will be disturbed (runs that were are flagged)",
            flush=True,
        )


def _measure(
    stack: BenchStack, setup: Setup, load: Load, concurrency: int, options: Options
) -> Record:
    if options.warmup_s > 0:
        run_wrk(load, concurrency, options.threads, options.warmup_s)
        time.sleep(_SETTLE_S)
    pids = stack.pids()
    counters_before = sidecar_counters(stack.metrics_urls())
    before = _CpuSnapshot.take(pids)
    result = run_wrk(load, concurrency, options.threads, options.duration_s)
    after = _CpuSnapshot.take(pids)
    time.sleep(_SETTLE_S)
    stack.check_alive()
    counters = counters_since(sidecar_counters(stack.metrics_urls()), counters_before)
    counters["usage_read"] = counters["input_tokens"] // PROMPT_TOKENS

    def per_request_us(seconds: float) -> float:
        return round(seconds * 1e6 / result.requests, 1) if result.requests else 0.0

    record = Record(
        setup=setup.name,
        concurrency=concurrency,
        rps=round(result.rps, 1),
        p50_ms=round(result.p50_ms, 3),
        p90_ms=round(result.p90_ms, 3),
        p99_ms=round(result.p99_ms, 3),
        envoy_cpu_us_per_req=per_request_us(after.envoy - before.envoy),
        sidecar_cpu_us_per_req=per_request_us(after.sidecar - before.sidecar),
        requests=result.requests,
        duration_s=round(result.duration_s, 3),
        max_ms=round(result.max_ms, 3),
        non_2xx=result.non_2xx,
        socket_errors=result.socket_errors,
        upstream_cpu_us_per_req=per_request_us(after.upstream - before.upstream),
        wrk_cpu_us_per_req=per_request_us(after.wrk - before.wrk),
        machine_cpu_busy_pct=round(after.machine.busy_percent_since(before.machine), 1),
        other_cpus=round(after.other_cpus_since(before), 2),
        path=setup.path,
        sidecar_counters=counters,
    )
    record.problems = _problems(setup, record, counters)
    return record


@dataclass(frozen=True)
class _CpuSnapshot:
    """CPU seconds of each process that matters, and the machine's ticks, at one moment."""

    envoy: float
    sidecar: float
    upstream: float
    wrk: float
    machine: MachineCpu
    wall_s: float

    @classmethod
    def take(cls, pids: Pids) -> "_CpuSnapshot":
        return cls(
            envoy=process_cpu_s(pids.envoy),
            sidecar=process_tree_cpu_s(pids.sidecar),
            upstream=process_cpu_s(pids.upstream),
            wrk=children_cpu_s(),
            machine=machine_cpu(),
            wall_s=time.monotonic(),
        )

    def other_cpus_since(self, earlier: "_CpuSnapshot") -> float:
        """CPUs kept busy by anything else: other processes, interrupts, the hypervisor."""
        ours = (
            (self.envoy - earlier.envoy)
            + (self.sidecar - earlier.sidecar)
            + (self.upstream - earlier.upstream)
            + (self.wrk - earlier.wrk)
        )
        wall_s = self.wall_s - earlier.wall_s
        busy_s = self.machine.busy_s_since(earlier.machine)
        return max(0.0, busy_s - ours) / wall_s if wall_s > 0 else 0.0


def _problems(setup: Setup, record: Record, counters: dict[str, int]) -> list[str]:
    """What makes a run's numbers suspect.

    Counts at the edges of a run may differ by the requests in flight when wrk started
    or stopped, hence the slack.
    """
    problems = []
    if record.requests == 0:
        problems.append("no request completed")
    if record.non_2xx:
        problems.append(f"{record.non_2xx} of {record.requests} answers had status >= 400")
    if record.socket_errors:
        problems.append(f"{record.socket_errors} socket errors or timeouts")
    if record.other_cpus > _OTHER_CPUS_LIMIT:
        problems.append(
            f"something else kept {record.other_cpus:.2f} CPUs busy during the run "
            "(other processes?): run again on a quiet machine"
        )
    slack = 2 * record.concurrency
    if not setup.via_sidecar:
        if counters["requests"] > slack:
            problems.append(f"the sidecar saw {counters['requests']} requests on the plain route")
        return problems
    routed, usage_reads = counters["routed"], counters["usage_read"]
    if abs(routed - record.requests) > slack:
        problems.append(f"the sidecar routed {routed} requests; wrk completed {record.requests}")
    if abs(usage_reads - routed) > slack:
        problems.append(f"the sidecar read the usage of {usage_reads} of {routed} answers")
    for name in ("fallbacks", "shed", "errors"):
        if counters[name] > slack:
            problems.append(f"the sidecar counted {counters[name]} {name}")
    return problems


def _smoke_test(setup: Setup) -> str:
    """Send one request; fail unless it is answered 200 by the expected path."""
    request = urllib.request.Request(
        FRONT_URL + setup.path,
        data=setup.body,
        headers={"Content-Type": "application/json", "Authorization": setup.authorization},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            rung = response.headers.get("x-ai-sidecar-rung")
            model = json.loads(response.read()).get("model")
    except urllib.error.HTTPError as error:
        detail = error.read()[:300].decode(errors="replace")
        raise BenchError(
            f"{setup.name}: POST {setup.path} answered {error.code}: {detail}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise BenchError(f"{setup.name}: POST {setup.path} failed: {error}") from None
    if setup.via_sidecar != (rung is not None):
        seen = "went through" if rung is not None else "did not go through"
        raise BenchError(f"{setup.name}: POST {setup.path} {seen} the sidecar")
    return f"{setup.name}: POST {setup.path} -> 200, model {model}, rung {rung or '-'}"


def _progress(record: Record) -> str:
    errors = record.non_2xx + record.socket_errors
    return (
        f"{record.setup}, concurrency {record.concurrency}: {record.rps:,.0f} req/s, "
        f"p50 {record.p50_ms:.2f} ms, p99 {record.p99_ms:.2f} ms, "
        f"Envoy {record.envoy_cpu_us_per_req:,.0f} µs/req, "
        f"sidecar {record.sidecar_cpu_us_per_req:,.0f} µs/req"
        + (f", {errors} ERRORS" if errors else "")
    )


# --- Set-up and description --------------------------------------------------------------------


def _fresh_log_dir(log_dir: Path) -> None:
    """Remove the previous run's logs and bodies (an access log is hundreds of MB)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in [*log_dir.glob("*.log"), *log_dir.glob("body-*.json")]:
        old.unlink()


def _load_for(setup: Setup, log_dir: Path) -> Load:
    body_file = log_dir / f"body-{setup.name}.json"
    body_file.write_bytes(setup.body)
    return Load(FRONT_URL + setup.path, body_file, setup.authorization)


def _telemetry_env(endpoint: str, options: Options) -> dict[str, str]:
    """Tracing on with a ratio sampler, exporting to the sink (metrics are always on)."""
    return {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": f"{options.sample_ratio:g}",
    }


def _notes(options: Options, sink: OtlpSink, sidecar_requests: int) -> list[str]:
    share = 100.0 * sink.spans / sidecar_requests if sidecar_requests else 0.0
    return [
        f"Tracing: sampler parentbased_traceidratio {options.sample_ratio:g}; the OTLP sink "
        f"received {sink.spans:,} spans in {sink.exports:,} exports for the sidecar's "
        f"{sidecar_requests:,} requests ({share:.1f} %, warm-ups and checks included).",
        "CPU per request: CPU time (user + system, all threads, from /proc/<pid>/stat) of "
        "the process during the measured run, divided by the requests wrk completed. "
        "The sidecar's figure under `envoy` is its idle cost (it sees none of those requests).",
        "Latency is wrk's (HdrHistogram, exact percentiles via bench/wrk.lua): the client's "
        "view, from the request written to the whole answer read.",
        f"All processes share {_cpu_count()} CPUs, wrk included: the last table says how "
        "many CPUs each kept busy. The sidecar is one Python process whose event loop runs "
        "on one CPU at a time (gRPC's threads and the span exporter add a little), so a "
        "figure near 1 CPU there means the sidecar is what limits throughput.",
        "results.json also has, per run, the sidecar's own counters (`sidecar_counters`: "
        "requests routed, answers whose usage it read, fallbacks, sheds, errors), which "
        "show that every measured request took the intended path.",
    ]


def _machine(options: Options) -> dict[str, str]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{_cpu_count()} CPUs, {_cpu_model()}, Linux {platform.release()}",
        "code": _code_version(),
        "versions": (
            f"Envoy {_envoy_version()}, Python {platform.python_version()}, {wrk_version()}"
        ),
        "runs": (
            f"{options.warmup_s:g} s warm-up, then {options.duration_s:g} s measured, per setup "
            f"and concurrency; wrk --threads {options.threads}; front Envoy --concurrency 2 "
            "(as `make run`), fake upstream Envoy --concurrency 1; "
            + (
                "one sidecar process on the abstract Unix socket (as `make run`)"
                if options.workers == 1
                else f"{options.workers} sidecar worker processes on TCP "
                "127.0.0.1:19100 (serve --workers, SO_REUSEPORT)"
            )
        ),
    }


def _code_version() -> str:
    """The commit measured, and whether the working tree differed from it."""

    def git(*args: str) -> str:
        run = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return run.stdout.rstrip() if run.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    measured = ("sidecar", "sidecar_demo", "envoy", "examples", "proto")
    status = git("status", "--porcelain", "--untracked-files=no", "--", *measured)
    dirty = sorted({line[3:].split("/")[0] + "/" for line in status.splitlines()})
    changes = f" with uncommitted changes in {', '.join(dirty)}" if dirty else ""
    return f"commit {commit}{changes}"


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.machine()


def _envoy_version() -> str:
    envoy = Path(sys.executable).parent / "envoy"
    run = subprocess.run([str(envoy), "--version"], capture_output=True, text=True, check=False)
    # "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    found = re.search(r"version: \S+?/(\d+\.\d+\.\d+)/", run.stdout)
    return found.group(1) if found else "unknown"


if __name__ == "__main__":
    sys.exit(main())
