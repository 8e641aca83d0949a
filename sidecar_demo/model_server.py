"""Fake upstream model servers (OpenAI and Ollama APIs) for the demo and the end-to-end tests.

Each server answers with its own model name, records the requests it gets and lets a test
inject faults at runtime. Endpoints:

- `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings` (both APIs);
- `POST /api/chat`, `POST /api/generate` (Ollama servers only);
- `GET /_control/health`;
- `GET|PUT|DELETE /_control/fault` (see `sidecar_demo.faults`);
- `GET /_control/stalled?count=N`: wait until exactly N requests are stalled;
- `GET|DELETE /_control/requests`: the last `RECORD_CAPACITY` recorded requests;
- anything else: an echo of the request as JSON, to show non-AI traffic passes untouched.

Faults apply to the AI endpoints only; the control endpoints are not recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sidecar_demo.faults import DEFAULT_FAIL_STATUS, Fault, FaultSpecError, FaultState
from sidecar_demo.replies import (
    BadRequestError,
    Reply,
    ReplyBuilder,
    ollama_chat,
    ollama_error,
    ollama_generate,
    openai_chat,
    openai_completion,
    openai_embeddings,
    openai_error,
)
from sidecar_demo.specs import DEMO_FLEET, ModelServerSpec

__all__ = [
    "DEMO_FLEET",
    "MAX_STALL_S",
    "RECORD_CAPACITY",
    "SERVER_STATE",
    "ModelServerSpec",
    "ModelServers",
    "RequestRecorder",
    "ServerState",
    "SleepFn",
    "build_app",
    "serve_forever",
]

logger = logging.getLogger(__name__)

SleepFn = Callable[[float], Awaitable[None]]
ErrorBody = Callable[[str, int], dict[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_STALL_S = 300.0
SERVICE_PREFIX = "/services/"
MAX_STALLED_WAIT_S = 60.0
RECORD_CAPACITY = 200
CLIENT_MAX_SIZE = 64 * 1024 * 1024
SHUTDOWN_TIMEOUT_S = 5.0


class RequestRecorder:
    """The last `capacity` requests a server got, as JSON-ready dicts."""

    def __init__(self, capacity: int = RECORD_CAPACITY) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=capacity)

    def record(
        self, *, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> None:
        self._entries.append(
            {
                "method": method,
                "path": path,
                "query": query,
                "headers": dict(headers),
                "json": _json_or_none(body),
                "body_bytes": len(body),
            }
        )

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()


@dataclass
class ServerState:
    """Everything the handlers of one server share."""

    spec: ModelServerSpec
    sleep: SleepFn
    max_stall_s: float
    faults: FaultState = field(default_factory=FaultState)
    recorder: RequestRecorder = field(default_factory=RequestRecorder)


SERVER_STATE = web.AppKey("server_state", ServerState)


@dataclass(frozen=True)
class _Endpoint:
    build: ReplyBuilder
    error_body: ErrorBody


_OPENAI_ENDPOINTS = {
    "/v1/chat/completions": _Endpoint(openai_chat, openai_error),
    "/v1/completions": _Endpoint(openai_completion, openai_error),
    "/v1/embeddings": _Endpoint(openai_embeddings, openai_error),
}
_OLLAMA_ENDPOINTS = {
    "/api/chat": _Endpoint(ollama_chat, ollama_error),
    "/api/generate": _Endpoint(ollama_generate, ollama_error),
}


def build_app(
    spec: ModelServerSpec, *, sleep: SleepFn = asyncio.sleep, max_stall_s: float = MAX_STALL_S
) -> web.Application:
    """Build the aiohttp application of one fake model server.

    `sleep` performs the injected delays (tests pass a recording fake). Serve the app with
    `handler_cancellation=True` so a stalled request ends when its client goes away.
    """
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[SERVER_STATE] = ServerState(spec=spec, sleep=sleep, max_stall_s=max_stall_s)
    app.on_shutdown.append(_release_stalled_requests)
    _add_control_routes(app.router)
    _add_ai_routes(app.router, spec)
    app.router.add_route("*", "/{tail:.*}", handle_echo)
    return app


def _add_control_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/_control/health", handle_health)
    router.add_get("/_control/fault", handle_get_fault)
    router.add_put("/_control/fault", handle_put_fault)
    router.add_delete("/_control/fault", handle_delete_fault)
    router.add_get("/_control/stalled", handle_wait_for_stalled)
    router.add_get("/_control/requests", handle_get_requests)
    router.add_delete("/_control/requests", handle_delete_requests)
    router.add_route("*", "/_control/{tail:.*}", handle_unknown_control)


def _add_ai_routes(router: web.UrlDispatcher, spec: ModelServerSpec) -> None:
    endpoints = dict(_OPENAI_ENDPOINTS)
    if spec.api == "ollama":
        endpoints.update(_OLLAMA_ENDPOINTS)
    for path, endpoint in endpoints.items():
        router.add_post(path, _ai_handler(endpoint))


async def _release_stalled_requests(app: web.Application) -> None:
    app[SERVER_STATE].faults.release_stalled()


# --- Control endpoints ----------------------------------------------------------------------


async def handle_health(request: web.Request) -> web.Response:
    spec = request.app[SERVER_STATE].spec
    return web.json_response({"status": "ok", "name": spec.name, "model": spec.model})


async def handle_get_fault(request: web.Request) -> web.Response:
    return _fault_response(request.app[SERVER_STATE].faults)


async def handle_put_fault(request: web.Request) -> web.Response:
    faults = request.app[SERVER_STATE].faults
    try:
        fault = Fault.from_json(_json_or_none(await request.read()))
    except FaultSpecError as exc:
        return _control_error(f"bad fault: {exc}", 400)
    faults.set(fault)
    return _fault_response(faults)


async def handle_delete_fault(request: web.Request) -> web.Response:
    faults = request.app[SERVER_STATE].faults
    faults.clear()
    return _fault_response(faults)


async def handle_wait_for_stalled(request: web.Request) -> web.Response:
    """Wait (up to `MAX_STALLED_WAIT_S`) until exactly `count` requests are stalled."""
    faults = request.app[SERVER_STATE].faults
    raw_count = request.query.get("count", "1")
    if not raw_count.isdigit():
        return _control_error(f"count must be a non-negative integer; got {raw_count!r}", 400)
    try:
        async with asyncio.timeout(MAX_STALLED_WAIT_S):
            await faults.wait_for_stalled(int(raw_count))
    except TimeoutError:
        return _control_error(f"{faults.stalled} requests stalled, not {raw_count}", 504)
    return web.json_response({"stalled": faults.stalled})


async def handle_get_requests(request: web.Request) -> web.Response:
    return web.json_response({"requests": request.app[SERVER_STATE].recorder.entries()})


async def handle_delete_requests(request: web.Request) -> web.Response:
    request.app[SERVER_STATE].recorder.clear()
    return web.json_response({"requests": []})


async def handle_unknown_control(request: web.Request) -> web.Response:
    return _control_error(f"no control endpoint {request.method} {request.path}", 404)


def _fault_response(faults: FaultState) -> web.Response:
    return web.json_response({"fault": faults.describe(), "stalled": faults.stalled})


def _control_error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


# --- Echo -----------------------------------------------------------------------------------


async def handle_echo(request: web.Request) -> web.StreamResponse:
    """Any non-AI request: describe it back, to show what reached the server.

    Paths under ``/services/`` stand for JSON services (a fraud model, a rule engine):
    the active fault applies to them as to the AI endpoints.
    """
    state = request.app[SERVER_STATE]
    body = await request.read()
    _record(state.recorder, request, body)
    if request.path.startswith(SERVICE_PREFIX):
        faulted = await _service_fault(request, state)
        if faulted is not None:
            return faulted
    return web.json_response(
        {
            "server": state.spec.name,
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "body_bytes": len(body),
            "headers": _lower_case_headers(request),
        }
    )


async def _service_fault(request: web.Request, state: ServerState) -> web.StreamResponse | None:
    return await _apply_fault(request, state, state.faults.take(), _service_error)


def _service_error(message: str, status: int) -> dict[str, Any]:
    return {"error": message}


async def _apply_fault(
    request: web.Request, state: ServerState, fault: Fault, error_body: ErrorBody
) -> web.StreamResponse | None:
    """Stall, delay, drop or fail as ``fault`` says; None when the request goes on."""
    if fault.mode == "stall":
        await state.faults.stall(state.max_stall_s)
    if fault.latency_ms:
        await state.sleep(fault.latency_ms / 1000)
    if fault.mode == "reset":
        return _drop_connection(request)
    if fault.mode == "fail":
        return _injected_failure(error_body, fault)
    return None


# --- AI endpoints ---------------------------------------------------------------------------


def _ai_handler(endpoint: _Endpoint) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[SERVER_STATE]
        body = await request.read()
        _record(state.recorder, request, body)
        return await _answer(request, state, endpoint, body)

    return handle


async def _answer(
    request: web.Request, state: ServerState, endpoint: _Endpoint, body: bytes
) -> web.StreamResponse:
    """Apply the active fault, then answer the request with the endpoint's reply."""
    fault = state.faults.take()
    faulted = await _apply_fault(request, state, fault, endpoint.error_body)
    if faulted is not None:
        return faulted
    try:
        reply = endpoint.build(state.spec, _parse_json(body))
    except BadRequestError as exc:
        return web.json_response(endpoint.error_body(str(exc), 400), status=400)
    if fault.mode == "fail_midstream":
        return await _send_then_drop(request, reply)
    return await _send(request, reply, fault.chunk_delay_ms / 1000, state.sleep)


def _parse_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from exc


def _injected_failure(error_body: ErrorBody, fault: Fault) -> web.Response:
    status = fault.status or DEFAULT_FAIL_STATUS
    headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
    body = error_body(f"injected fault: HTTP {status}", status)
    return web.json_response(body, status=status, headers=headers)


async def _send(
    request: web.Request, reply: Reply, chunk_delay_s: float, sleep: SleepFn
) -> web.StreamResponse:
    if not reply.streamed:
        return web.Response(body=reply.chunks[0], content_type=reply.content_type)
    response = _stream_response(reply)
    await response.prepare(request)
    for index, chunk in enumerate(reply.chunks):
        if index and chunk_delay_s:
            await sleep(chunk_delay_s)
        await response.write(chunk)
    await response.write_eof()
    return response


async def _send_then_drop(request: web.Request, reply: Reply) -> web.StreamResponse:
    """Send the headers and the first chunk (half the body if not streamed), then drop."""
    response = _stream_response(reply)
    first = reply.chunks[0]
    if not reply.streamed:
        response.content_length = len(first)
        first = first[: len(first) // 2]
    await response.prepare(request)
    await response.write(first)
    return _drop_connection(request, response)


def _stream_response(reply: Reply) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    response.content_type = reply.content_type
    return response


def _drop_connection(
    request: web.Request, response: web.StreamResponse | None = None
) -> web.StreamResponse:
    """Abort the TCP connection; aiohttp then gives up on the returned response."""
    if request.transport is not None:
        request.transport.abort()
    return response if response is not None else web.Response(status=DEFAULT_FAIL_STATUS)


# --- Recording helpers ----------------------------------------------------------------------


def _record(recorder: RequestRecorder, request: web.Request, body: bytes) -> None:
    recorder.record(
        method=request.method,
        path=request.path,
        query=request.query_string,
        headers=_lower_case_headers(request),
        body=body,
    )


def _lower_case_headers(request: web.Request) -> dict[str, str]:
    """Return the request headers with lower-case names, joining repeated ones by ", "."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _json_or_none(body: bytes) -> object:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


# --- Running several servers ----------------------------------------------------------------


class ModelServers:
    """Several fake model servers in one event loop, one aiohttp runner each."""

    def __init__(self) -> None:
        self._runners: dict[str, web.AppRunner] = {}

    @property
    def base_urls(self) -> dict[str, str]:
        """The bound address of each running server, by name (resolves port 0)."""
        return {name: _bound_url(runner) for name, runner in self._runners.items()}

    async def start(self, specs: Sequence[ModelServerSpec]) -> None:
        """Start a server per spec; on any failure, stop the ones already started."""
        if self._runners:
            raise RuntimeError("the model servers are already running")
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"model server names must be unique: {names}")
        try:
            for spec in specs:
                self._runners[spec.name] = await _start_server(spec)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every server; stalled requests are released first."""
        runners = list(self._runners.values())
        self._runners.clear()
        for runner in reversed(runners):
            await runner.cleanup()


async def _start_server(spec: ModelServerSpec) -> web.AppRunner:
    runner = web.AppRunner(
        build_app(spec), handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, spec.host, spec.port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _bound_url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve_forever(specs: Sequence[ModelServerSpec] = DEMO_FLEET) -> None:
    """Run the model servers until cancelled, then stop them."""
    servers = ModelServers()
    await servers.start(specs)
    try:
        for spec in specs:
            url = servers.base_urls[spec.name]
            logger.info(
                "model server %s (%s, model %s) on %s", spec.name, spec.api, spec.model, url
            )
        await asyncio.Event().wait()
    finally:
        await servers.stop()
