"""The sidecar's own cost per request, without gRPC or Envoy: ``python -m bench.hotpath``.

Plays Envoy's side of one ext_proc stream in process, message by message (request
headers, request body, response headers, response body), against the real processor,
runtime, policy and telemetry (a ratio sampler and metrics on, spans dropped, the
decision log on), and reports the CPU time per request. Then profiles the same loop
with cProfile and prints where that time goes.

This is the part of the sidecar's CPU per request that its own code decides; the rest
(``make bench`` measures the whole) is the gRPC server and the event loop moving the
messages. It is a tool, not a test: it asserts nothing about time.
"""

import argparse
import asyncio
import cProfile
import io
import json
import logging
import pstats
import time
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from bench.setups import BENCH_API_KEY, SIDECAR, SIDECAR_CHAIN, Setup
from sidecar import __version__
from sidecar.core.clock import MonotonicClock
from sidecar.core.router import ActivePolicy
from sidecar.engine.runtime import RoutingRuntime
from sidecar.extproc.processor import StreamProcessor
from sidecar.logs import configure_logging
from sidecar.policy.loader import load_policy, resolve_credentials
from sidecar.telemetry.decision_log import DecisionLog
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.sinks import Telemetry
from sidecar.telemetry.tracing import Tracing

REPO = Path(__file__).resolve().parent.parent
ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 27, "completion_tokens": 12, "total_tokens": 39},
    }
).encode()
OLLAMA_ANSWER = json.dumps(
    {
        "model": "bench",
        "message": {"role": "assistant", "content": "ok"},
        "done": True,
        "prompt_eval_count": 27,
        "eval_count": 12,
    }
).encode()


def _headers(pairs: dict[str, str], end_of_stream: bool = False) -> Any:
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
    )
    return ext_proc.HttpHeaders(headers=header_map, end_of_stream=end_of_stream)


def stream_messages(setup: Setup) -> list[Any]:
    """The four messages Envoy sends for one request of ``setup``."""
    request_headers = {
        ":method": "POST",
        ":path": setup.path,
        ":authority": "bench",
        "content-type": "application/json",
        "content-length": str(len(setup.body)),
        "authorization": f"Bearer {BENCH_API_KEY}",
        "user-agent": "wrk",
        "x-request-id": "0f0e0d0c-0b0a-4908-8706-050403020100",
    }
    answer = OLLAMA_ANSWER if setup.path.startswith("/api/") else ANSWER
    response_headers = {
        ":status": "200",
        "content-type": "application/json",
        "content-length": str(len(answer)),
    }
    return [
        ext_proc.ProcessingRequest(request_headers=_headers(request_headers)),
        ext_proc.ProcessingRequest(
            request_body=ext_proc.HttpBody(body=setup.body, end_of_stream=True)
        ),
        ext_proc.ProcessingRequest(response_headers=_headers(response_headers)),
        ext_proc.ProcessingRequest(
            response_body=ext_proc.HttpBody(body=answer, end_of_stream=True)
        ),
    ]


class _Discard(io.StringIO):
    """A text stream that keeps nothing."""

    def write(self, text: str) -> int:
        return len(text)


def build_runtime() -> tuple[RoutingRuntime, Telemetry]:
    """The demo policy's runtime, with telemetry as ``make bench`` runs it."""
    policy_path = REPO / "examples" / "policy.yaml"
    policy = load_policy(policy_path)
    environ = {
        "DEMO_OPENAI_API_KEY": "sk-bench",
        "DEMO_ENTERPRISE_API_KEY": "sk-bench",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }
    active = ActivePolicy(policy, resolve_credentials(policy, environ, str(policy_path)))
    runtime = RoutingRuntime(active, MonotonicClock())
    tracing = Tracing.from_environment(environ, __version__)
    metrics = Metrics(policy.models, policy.clusters, policy.tiers, known_tenants=policy.tenants)
    nowhere = _Discard()  # decision lines are built and written, then dropped
    decision_log = DecisionLog(logging.INFO, lambda: nowhere)
    return runtime, Telemetry(tracing, metrics, decision_log)


async def run_requests(runtime: RoutingRuntime, telemetry: Telemetry, setup: Setup, n: int) -> None:
    messages = stream_messages(setup)
    for _ in range(n):
        processor = StreamProcessor(runtime, telemetry)
        try:
            for message in messages:
                await processor.handle(message)
        finally:
            processor.close()
        await asyncio.sleep(0)  # as between streams in the server: settlements run
    await runtime.accounting.drain(5)


def measure(setup: Setup, n: int) -> float:
    """CPU microseconds per request for ``n`` requests of ``setup`` (after a warm-up)."""
    runtime, telemetry = build_runtime()

    async def run() -> float:
        await run_requests(runtime, telemetry, setup, 200)
        started = time.process_time()
        await run_requests(runtime, telemetry, setup, n)
        return (time.process_time() - started) / n * 1e6

    return asyncio.run(run())


def profile(setup: Setup, n: int, top: int) -> str:
    runtime, telemetry = build_runtime()
    profiler = cProfile.Profile()

    async def run() -> None:
        await run_requests(runtime, telemetry, setup, 200)
        profiler.enable()
        await run_requests(runtime, telemetry, setup, n)
        profiler.disable()

    asyncio.run(run())
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hotpath",
        description=(
            "The sidecar's own CPU per request, in process, without gRPC or Envoy "
            "(and, with --profile, where it goes)."
        ),
    )
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument("--top", type=int, default=25)
    options = parser.parse_args()
    configure_logging("info")
    for setup in (SIDECAR, SIDECAR_CHAIN):
        micros = measure(setup, options.requests)
        print(f"{setup.name:14} {micros:7.1f} us of sidecar CPU per request (in process)")
        if options.profile:
            print(profile(setup, options.requests, options.top))


if __name__ == "__main__":
    main()
