"""Driving one setup with wrk at a fixed concurrency, and reading wrk's results.

wrk runs ``bench/wrk.lua``, which sends one fixed POST on every connection and, when
done, prints a ``BENCH_RESULT`` line of JSON with the exact percentiles of wrk's
latency histogram. Each connection has at most one request in flight, so the number
of connections is the concurrency.
"""

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

WRK_SCRIPT: Final = Path(__file__).with_name("wrk.lua")
_RESULT_PREFIX: Final = "BENCH_RESULT "


class LoadError(RuntimeError):
    """wrk is missing, failed, or printed no result."""


@dataclass(frozen=True)
class Load:
    """What to send: the URL, the body (in a file, for the wrk script) and the key."""

    url: str
    body_file: Path
    authorization: str


@dataclass(frozen=True)
class WrkResult:
    """wrk's summary of one run. Latencies in milliseconds."""

    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    """Responses wrk counts as errors: status 400 or more."""
    socket_errors: int
    """Connect, read and write errors and timeouts."""

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def wrk_binary() -> str:
    """The path of wrk, or :class:`LoadError` saying how to get it."""
    found = shutil.which("wrk")
    if found is None:
        raise LoadError(
            "wrk is not installed: run `make bench` (it installs it) or apt-get install wrk"
        )
    return found


def wrk_version() -> str:
    """The version line of wrk (it prints it with its usage, and exits with 1)."""
    run = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, check=False)
    return (run.stdout or run.stderr).splitlines()[0].split(" Copyright")[0].strip()


def run_wrk(load: Load, concurrency: int, threads: int, duration_s: float) -> WrkResult:
    """Drive ``load`` with ``concurrency`` connections for ``duration_s`` seconds."""
    argv = [
        wrk_binary(),
        f"--threads={max(1, min(threads, concurrency))}",
        f"--connections={concurrency}",
        f"--duration={max(1, round(duration_s))}s",
        "--timeout=5s",
        "--latency",
        f"--script={WRK_SCRIPT}",
        load.url,
    ]
    env = {
        **os.environ,
        "BENCH_BODY_FILE": str(load.body_file),
        "BENCH_AUTHORIZATION": load.authorization,
    }
    run = subprocess.run(
        argv, capture_output=True, text=True, env=env, check=False, timeout=duration_s + 30
    )
    if run.returncode != 0:
        raise LoadError(f"wrk exited with code {run.returncode}:\n{run.stdout}{run.stderr}")
    return parse_wrk_output(run.stdout)


def parse_wrk_output(stdout: str) -> WrkResult:
    """The result from the ``BENCH_RESULT`` line ``bench/wrk.lua`` prints."""
    lines = [line for line in stdout.splitlines() if line.startswith(_RESULT_PREFIX)]
    if not lines:
        raise LoadError(f"wrk printed no {_RESULT_PREFIX.strip()} line:\n{stdout}")
    raw = json.loads(lines[-1].removeprefix(_RESULT_PREFIX))
    errors = raw["errors"]
    return WrkResult(
        requests=int(raw["requests"]),
        duration_s=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1e3,
        p90_ms=raw["p90_us"] / 1e3,
        p99_ms=raw["p99_us"] / 1e3,
        max_ms=raw["max_us"] / 1e3,
        non_2xx=int(errors["status"]),
        socket_errors=int(errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]),
    )
