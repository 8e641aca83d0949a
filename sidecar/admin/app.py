"""The admin HTTP application (aiohttp), bound to localhost by default.

Read-only: ``/`` is a status page for people (it polls ``/state``); ``/healthz``
answers while the process runs; ``/readyz`` only while the gRPC server accepts streams;
``/state`` shows the active policy and live state (budgets, flags, canaries and SLOs
included); ``/metrics`` is the Prometheus exposition; ``GET /flags`` lists the flags.

Mutating: ``POST /queues/{model}/drain`` hands parked requests to an operator;
``POST /flags/{name}``, ``POST /alerts/alertmanager``, ``POST /breakers/{cluster}``
and ``POST /canaries/{tier}/{model}`` steer routing (:mod:`sidecar.admin.flags`);
``POST /reload`` reads the policy file again (:mod:`sidecar.engine.reload`). Every
mutating call needs ``Authorization: Bearer <token>`` with the token the sidecar was
started with; without a configured token, mutating calls are refused.
"""

import hmac
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from sidecar.admin.flags import (
    BadCallError,
    FlagControl,
    Switch,
    apply,
    parse_alertmanager,
    parse_breaker_call,
    parse_flag_call,
    parse_weight_call,
)
from sidecar.domain.secret import Secret

StateView = Callable[[], Mapping[str, Any]]
ReadinessCheck = Callable[[], bool]
QueueDrain = Callable[[str, int], list[dict[str, Any]] | None]
AccountingView = Callable[[], Awaitable[Mapping[str, Any]]]

_STATE_VIEW = web.AppKey[StateView]("state_view")
_IS_READY = web.AppKey[ReadinessCheck]("is_ready")
_DRAIN = web.AppKey[QueueDrain]("drain")
_TOKEN = web.AppKey[Secret | None]("token")
_ACCOUNTING = web.AppKey[AccountingView | None]("accounting")
_FLAGS = web.AppKey[FlagControl | None]("flags")
Reload = Callable[[str], Mapping[str, Any]]
_RELOAD = web.AppKey[Reload | None]("reload")
ChangeCounter = Callable[[str], None]
_ON_CHANGE = web.AppKey[ChangeCounter | None]("on_change")
_MAX_DRAIN = 1000


class MetricsSource(Protocol):
    """Renders the Prometheus exposition: body and content type."""

    def render(self) -> tuple[bytes, str]: ...


_METRICS = web.AppKey[MetricsSource | None]("metrics")


def build_admin_app(
    state_view: StateView,
    is_ready: ReadinessCheck,
    drain: QueueDrain,
    token: Secret | None,
    metrics: MetricsSource | None = None,
    accounting_view: AccountingView | None = None,
    flags: FlagControl | None = None,
    reload: Reload | None = None,
    on_change: ChangeCounter | None = None,
) -> web.Application:
    """The admin application, reading live state through ``state_view``.

    ``accounting_view`` adds budgets and spend to ``/state`` (read from the counter
    store, which may be shared, hence awaited).
    """
    app = web.Application(middlewares=[_count_changes])
    app[_ON_CHANGE] = on_change
    app[_ACCOUNTING] = accounting_view
    app[_FLAGS] = flags
    app[_RELOAD] = reload
    app[_METRICS] = metrics
    app[_STATE_VIEW] = state_view
    app[_IS_READY] = is_ready
    app[_DRAIN] = drain
    app[_TOKEN] = token
    app.router.add_get("/", _status_page)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/state", _state)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/queues/{model}/drain", _drain_queue)
    app.router.add_get("/flags", _list_flags)
    app.router.add_post("/flags/{name}", _switch_flag)
    app.router.add_post("/alerts/alertmanager", _alertmanager)
    app.router.add_post("/reload", _reload)
    app.router.add_post("/canaries/{tier}/{model}", _set_canary)
    app.router.add_post("/breakers/{cluster}", _force_breaker)
    return app


@web.middleware
async def _count_changes(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count every mutating call that changed something, by kind (its first path part)."""
    response: web.StreamResponse = await handler(request)
    counter = request.app[_ON_CHANGE]
    if request.method == "POST" and response.status < 300 and counter is not None:
        counter(request.path.strip("/").split("/", 1)[0])
    return response


_STATUS_PAGE = (Path(__file__).parent / "static" / "status.html").read_bytes()


async def _status_page(request: web.Request) -> web.Response:
    """A page a person reads at a glance; it polls ``/state`` every 2 s."""
    response = web.Response(body=_STATUS_PAGE, content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'"
    )
    return response


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    if request.app[_IS_READY]():
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready"}, status=503)


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[_METRICS]
    if metrics is None:
        return _error(404, "metrics are off")
    body, content_type = metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def _state(request: web.Request) -> web.Response:
    state = dict(request.app[_STATE_VIEW]())
    accounting = request.app[_ACCOUNTING]
    if accounting is not None:
        state["accounting"] = dict(await accounting())
    return web.json_response(state)


async def _drain_queue(request: web.Request) -> web.Response:
    refusal = _refuse_unauthorized(request)
    if refusal is not None:
        return refusal
    limit_text = request.query.get("limit", "100")
    if not limit_text.isdigit() or not 0 < int(limit_text) <= _MAX_DRAIN:
        return _error(400, f"limit must be a whole number from 1 to {_MAX_DRAIN}")
    drained = request.app[_DRAIN](request.match_info["model"], int(limit_text))
    if drained is None:
        return _error(404, f"model '{request.match_info['model']}' has no queue")
    return web.json_response({"requests": drained})


async def _list_flags(request: web.Request) -> web.Response:
    control = request.app[_FLAGS]
    return web.json_response({"flags": dict(control.snapshot()) if control else {}})


async def _switch_flag(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return await _switch(request, lambda payload: [parse_flag_call(name, payload)], "api")


async def _alertmanager(request: web.Request) -> web.Response:
    return await _switch(request, parse_alertmanager, "webhook")


async def _switch(
    request: web.Request, parse: Callable[[Any], list[Switch]], source: str
) -> web.Response:
    """Authorize, parse and apply flag switches; nothing changes unless all are valid."""
    refusal = _refuse_unauthorized(request)
    if refusal is not None:
        return refusal
    control = request.app[_FLAGS]
    if control is None:
        return _error(404, "this sidecar has no flags")
    try:
        switches = parse(await request.json())
    except ValueError as error:  # BadCallError, and JSON that does not parse
        return _error(400, str(error) if isinstance(error, BadCallError) else "body is not JSON")
    try:
        apply(control, switches, source)
    except LookupError as error:
        return _error(404 if source == "api" else 422, str(error.args[0]))
    names = sorted({switch.flag for switch in switches})
    return web.json_response({"flags": {n: control.snapshot()[n] for n in names}})


async def _set_canary(request: web.Request) -> web.Response:
    refusal = _refuse_unauthorized(request)
    if refusal is not None:
        return refusal
    control = request.app[_FLAGS]
    tier, model = request.match_info["tier"], request.match_info["model"]
    key = f"{tier}/{model}"
    if control is None or key not in control.canaries():
        return _error(404, f"no canary on the route {key}")
    try:
        weight = parse_weight_call(await request.json())
    except ValueError as error:
        return _error(400, str(error) if isinstance(error, BadCallError) else "body is not JSON")
    control.set_canary(tier, model, weight.weight_percent, weight.actor, weight.reason)
    return web.json_response({"canaries": {key: control.canaries()[key]}})


async def _force_breaker(request: web.Request) -> web.Response:
    refusal = _refuse_unauthorized(request)
    if refusal is not None:
        return refusal
    control = request.app[_FLAGS]
    cluster = request.match_info["cluster"]
    if control is None or cluster not in control.clusters():
        return _error(404, f"no cluster '{cluster}' in the policy")
    try:
        hold = parse_breaker_call(await request.json())
    except ValueError as error:
        return _error(400, str(error) if isinstance(error, BadCallError) else "body is not JSON")
    control.force_breaker(cluster, hold.state, hold.actor, hold.reason)
    return web.json_response({"cluster": cluster, "held": hold.state})


async def _reload(request: web.Request) -> web.Response:
    """Read the policy file again now; 422 with its problems when it is refused."""
    refusal = _refuse_unauthorized(request)
    if refusal is not None:
        return refusal
    reload = request.app[_RELOAD]
    if reload is None:
        return _error(404, "reload is not available")
    who = await _optional_who(request)
    if isinstance(who, web.Response):
        return who
    result = dict(reload(f"admin API, {who}" if who else "admin API"))
    return web.json_response(result, status=422 if result["result"] == "refused" else 200)


async def _optional_who(request: web.Request) -> str | web.Response:
    """``actor: reason`` from an optional JSON body; a 400 when the body is malformed."""
    if not request.can_read_body:
        return ""
    try:
        payload = await request.json()
    except ValueError:
        return _error(400, "body is not JSON")
    if not isinstance(payload, dict) or not all(
        isinstance(payload.get(field, ""), str) for field in ("actor", "reason")
    ):
        return _error(400, 'send nothing, or {"actor": "...", "reason": "..."}')
    return f"{payload.get('actor', '')}: {payload.get('reason', '')}".strip(": ")


def _refuse_unauthorized(request: web.Request) -> web.Response | None:
    token = request.app[_TOKEN]
    if token is None:
        return _error(403, "mutating admin calls are disabled: no admin token configured")
    presented = request.headers.get("authorization", "")
    expected = f"Bearer {token.reveal()}"
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        return _error(401, "missing or wrong admin token")
    return None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
