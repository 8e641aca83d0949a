"""The admin HTTP application (aiohttp), bound to localhost by default.

``/healthz`` answers while the process runs; ``/readyz`` only while the gRPC server
accepts streams; ``/state`` shows the active policy and the stream counters. It reads
state through the callables it is given and changes nothing.
"""

from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

StateView = Callable[[], Mapping[str, Any]]
ReadinessCheck = Callable[[], bool]

_STATE_VIEW = web.AppKey[StateView]("state_view")
_IS_READY = web.AppKey[ReadinessCheck]("is_ready")


def build_admin_app(state_view: StateView, is_ready: ReadinessCheck) -> web.Application:
    """The admin application, reading live state through ``state_view``."""
    app = web.Application()
    app[_STATE_VIEW] = state_view
    app[_IS_READY] = is_ready
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/state", _state)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    if request.app[_IS_READY]():
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready"}, status=503)


async def _state(request: web.Request) -> web.Response:
    return web.json_response(dict(request.app[_STATE_VIEW]()))
