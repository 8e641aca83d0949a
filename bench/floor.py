"""The floor under the sidecar's cost: ``python -m bench.floor``.

What does ext_proc cost in Python's gRPC before any routing work? This starts an
ext_proc server in the same gRPC library and event loop as the sidecar that answers
every message at once with an empty reply of its kind (no parsing, no decision, no
telemetry), an Envoy in front of it (``bench/floor-envoy.yaml``) and drives four
routes of that Envoy with wrk: ``/plain`` (no ext_proc), ``/two`` (request headers and
body only), ``/four`` (the four messages of the sidecar's routing path) and
``/observe`` (the request's two on the blocking filter, the response's two on a second
ext_proc filter in observability mode, which Envoy does not wait for). For each it
prints requests per second, latency, and the CPU time per request of the server and of
Envoy (which also serves the fixed answer), read from ``/proc`` around the measured
run, as ``make bench`` does.

No sidecar can cost less than this server on the same route and machine: the gap
between ``make bench``'s sidecar figure and the ``/four`` figure here is what the
sidecar's own code costs, and ``/two`` against ``/four`` is what the response phases
cost. It is not a test and asserts no timing.

Usage: ``python -m bench.floor [--duration S] [--concurrency N ...]``; the server
alone: ``python -m bench.floor --serve``.
"""

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from bench.load import Load, LoadError, run_wrk
from bench.probes import process_cpu_s
from bench.setups import SIDECAR
from sidecar_demo.stack import ManagedProcess, StackError

ENVOY_CONFIG: Final = Path(__file__).with_name("floor-envoy.yaml")
FRONT: Final = "http://127.0.0.1:19200"
ENVOY_ADMIN: Final = "http://127.0.0.1:19202"
LISTEN: Final = "unix-abstract:ai-sidecar-floor"
ROUTES: Final = (("plain", 0), ("two", 2), ("four", 4), ("observe", 4))
"""The routes of ``bench/floor-envoy.yaml`` and the ext_proc messages of each request
(``/observe``: two on the blocking filter, two not waited for)."""


class EmptyReplies(ext_proc_grpc.ExternalProcessorServicer):
    """Answers each ext_proc message with an empty reply of its kind: "go on".

    Messages of a filter in observability mode get no reply: Envoy does not wait for
    one. That filter's stream is ended by the server after the last message of the
    answer, as Envoy would otherwise keep it open (``deferred_close_timeout``).
    """

    async def Process(  # noqa: N802 - the gRPC method name
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for request in request_iterator:
            kind = request.WhichOneof("request")
            if request.observability_mode:
                if getattr(request, kind).end_of_stream:
                    return
                continue
            reply = ext_proc.ProcessingResponse()
            getattr(reply, kind).SetInParent()
            yield reply


async def serve() -> None:
    """The floor server on ``LISTEN``, until killed."""
    server = grpc.aio.server()
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(EmptyReplies(), server)
    server.add_insecure_port(LISTEN)
    await server.start()
    await server.wait_for_termination()


@dataclass(frozen=True)
class Row:
    """One route at one concurrency: wrk's figures and the CPU of the server and Envoy."""

    route: str
    messages: int
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float
    envoy_cpu_us: float
    errors: int


@dataclass(frozen=True)
class Run:
    """How each route is driven, and whose CPU is read."""

    duration_s: float
    warmup_s: float
    body_file: Path
    server_pid: int
    envoy_pid: int


def measure(route: str, messages: int, concurrency: int, run: Run) -> Row:
    """Warm ``route`` up, then drive it for the measured run and read the CPU around it."""
    load = Load(f"{FRONT}/{route}", run.body_file, "")
    if run.warmup_s > 0:
        run_wrk(load, concurrency, 1, run.warmup_s)
    server_before, envoy_before = process_cpu_s(run.server_pid), process_cpu_s(run.envoy_pid)
    result = run_wrk(load, concurrency, 1, run.duration_s)
    server_s = process_cpu_s(run.server_pid) - server_before
    envoy_s = process_cpu_s(run.envoy_pid) - envoy_before
    per_request_us = 1e6 / max(result.requests, 1)
    return Row(
        route,
        messages,
        concurrency,
        result.rps,
        result.p50_ms,
        result.p99_ms,
        server_s * per_request_us,
        envoy_s * per_request_us,
        result.non_2xx + result.socket_errors,
    )


def report(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table, with latency added over ``/plain`` at each concurrency."""
    plain = {row.concurrency: row for row in rows if row.route == "plain"}
    lines = [
        "| route | ext_proc messages | concurrency | req/s | p50 ms | p99 ms | added p50 ms"
        " | added p99 ms | server CPU µs/req | Envoy CPU µs/req | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        base = plain[row.concurrency]
        lines.append(
            f"| `/{row.route}` | {row.messages} | {row.concurrency} | {row.rps:,.0f} "
            f"| {row.p50_ms:.2f} | {row.p99_ms:.2f} | {row.p50_ms - base.p50_ms:+.2f} "
            f"| {row.p99_ms - base.p99_ms:+.2f} | {row.server_cpu_us:,.0f} "
            f"| {row.envoy_cpu_us:,.0f} | {row.errors} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, checked."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor",
        description=(
            "What ext_proc costs in Python's gRPC with no routing work: a server that "
            "answers every message with an empty reply, behind Envoy, against a plain route."
        ),
    )
    parser.add_argument("--serve", action="store_true", help="run the floor server only")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--log-dir", type=Path, default=Path(__file__).with_name("logs"))
    options = parser.parse_args(argv)
    if options.duration < 1 or options.warmup < 0 or min(options.concurrency) < 1:
        parser.error("--duration must be >= 1, --warmup >= 0, --concurrency >= 1")
    return options


def run_all(options: argparse.Namespace) -> list[Row]:
    """Start Envoy and the floor server, measure every route at every concurrency, stop."""
    options.log_dir.mkdir(parents=True, exist_ok=True)
    envoy = ManagedProcess(
        "floor envoy",
        [
            str(Path(sys.executable).parent / "envoy"),
            *("-c", str(ENVOY_CONFIG), "--disable-hot-restart", "--base-id", "7"),
            *("--concurrency", "1", "--log-level", "warning"),
        ],
        f"{ENVOY_ADMIN}/ready",
        options.log_dir / "floor-envoy.log",
        {},
    )
    server = ManagedProcess(
        "floor server",
        [sys.executable, "-m", "bench.floor", "--serve"],
        f"{FRONT}/four",
        options.log_dir / "floor-server.log",
        {"PATH": str(Path(sys.executable).parent)},
    )
    rows: list[Row] = []
    with tempfile.NamedTemporaryFile(suffix=".json") as body:
        body.write(SIDECAR.body)
        body.flush()
        try:
            envoy.start()
            server.start()
            assert server.pid is not None
            assert envoy.pid is not None
            run = Run(options.duration, options.warmup, Path(body.name), server.pid, envoy.pid)
            for concurrency in options.concurrency:
                for route, messages in ROUTES:
                    row = measure(route, messages, concurrency, run)
                    print(
                        f"  /{route:5} concurrency {concurrency:3}: {row.rps:8,.0f} req/s, "
                        f"server {row.server_cpu_us:5,.0f} µs/req",
                        flush=True,
                    )
                    rows.append(row)
                    time.sleep(0.3)  # the streams wrk cut off end before the next run
        finally:
            server.stop()
            envoy.stop()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Serve (``--serve``) or measure; 1 if a run had errors, 2 if it could not run."""
    options = parse_args(argv)
    if options.serve:
        asyncio.run(serve())
        return 0
    try:
        rows = run_all(options)
    except (StackError, LoadError, OSError) as error:
        print(f"bench.floor: {error}", file=sys.stderr)
        return 2
    print()
    print(report(rows))
    return 1 if any(row.errors for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
