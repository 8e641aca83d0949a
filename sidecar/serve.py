"""``python -m sidecar serve``: the ext_proc gRPC server, its admin port and its policy.

:func:`serve` wires one sidecar process together: the counter store and the routing
runtime (held so that a reload can replace it), telemetry, the gRPC server, the admin
application, the policy reloader (file watch and SIGHUP) and the store's background
reconciling; then it serves until SIGTERM or SIGINT, and stops in order, letting open
streams finish.
"""

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from sidecar import __version__
from sidecar.admin.app import build_admin_app
from sidecar.core.clock import MonotonicClock
from sidecar.core.router import ActivePolicy
from sidecar.domain.ids import ModelName
from sidecar.domain.secret import Secret
from sidecar.engine.accounting import Accounting
from sidecar.engine.reload import PolicyReloader, ReloadResult, RuntimeHolder
from sidecar.engine.runtime import RoutingRuntime
from sidecar.extproc.grpc_server import GrpcServer
from sidecar.extproc.server import ExternalProcessorService, StreamRegistry
from sidecar.state.factory import build_store, describe_store, keep_reconciling
from sidecar.state.guarded import GuardedStore
from sidecar.telemetry.decision_log import LOGGER_NAME as DECISIONS_LOGGER
from sidecar.telemetry.decision_log import DecisionLog
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.sinks import Telemetry
from sidecar.telemetry.tracing import Tracing

ADMIN_TOKEN_ENV = "AI_SIDECAR_ADMIN_TOKEN"

log = logging.getLogger("sidecar")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    policy_path: Path
    listen: str
    admin: str | None
    grace_s: float
    decision_log: str = "info"
    worker_index: int | None = None
    watch_s: float = 1.0
    envoy_config: Path | None = None


async def serve(options: ServeOptions, active: ActivePolicy) -> None:
    streams = StreamRegistry()
    attempts = StreamRegistry()
    store = build_store(active.policy.store, os.environ)
    holder = RuntimeHolder(RoutingRuntime(active, MonotonicClock(), Accounting(store)))
    telemetry = _telemetry(options, active, holder, streams)
    reloader = PolicyReloader(options.policy_path, os.environ, holder, options.envoy_config)
    if telemetry.metrics is not None:
        metrics = telemetry.metrics
        reloader.listeners.append(lambda result: _count_reload(metrics, holder, result))
    service = ExternalProcessorService(lambda: holder.current, streams, attempts, telemetry)
    grpc_server = GrpcServer(
        service,
        options.listen,
        active.policy.max_body_bytes,
        share_port=options.worker_index is not None,
    )
    serving = False

    def state_view() -> dict[str, Any]:
        runtime = holder.current
        policy = {
            "digest": runtime.active.policy.digest,
            "file": str(options.policy_path),
            "last_reload": reloader.last,
        }
        return {
            "version": __version__,
            "policy": policy,
            "streams": streams.snapshot(),
            "upstream_attempts": attempts.snapshot(),
            **runtime.snapshot(),
        }

    admin_app = build_admin_app(
        state_view,
        lambda: serving,
        lambda model, limit: _drain(holder.current, model, limit),
        _admin_token(),
        telemetry.metrics,
        lambda: holder.current.accounting.view(holder.current.active.policy),
        _RuntimeFlags(holder),
        lambda trigger: reloader.reload(trigger).as_dict(),
        telemetry.metrics.admin_change if telemetry.metrics is not None else None,
    )
    admin_runner = await _start_admin(options.admin, admin_app)
    background = [
        asyncio.create_task(keep_reconciling(store, active.policy.store.retry_shared_after_s)),
    ]
    if options.watch_s > 0:
        background.append(asyncio.create_task(reloader.watch(options.watch_s)))
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: reloader.reload("SIGHUP"))
    with _decision_lines_first(telemetry.decision_log):
        await grpc_server.start()
        serving = True
        log.info(
            "serving",
            extra={
                "listen": options.listen,
                "admin": options.admin,
                "policy": active.policy.digest,
                "store": describe_store(active.policy.store, os.environ),
                "worker": options.worker_index,
            },
        )
        await _wait_for_stop_signal()
        serving = False
        log.info("stopping", extra={"grace_s": options.grace_s, "open_streams": streams.active})
        await grpc_server.stop(options.grace_s)
        await holder.current.accounting.drain(options.grace_s)
        for task in background:
            task.cancel()
        await store.close()
        if admin_runner is not None:
            await admin_runner.cleanup()
        await asyncio.to_thread(telemetry.tracing.shutdown)


def _drain(runtime: RoutingRuntime, model: str, limit: int) -> list[dict[str, Any]] | None:
    queue = runtime.queue_for(ModelName(model))
    if queue is None:
        return None
    return [
        {
            "id": item.request_id,
            "tenant": item.tenant,
            "model": item.model,
            "path": item.path,
            "body": item.body,
            "queued_at_s_ago": round(runtime.clock.now() - item.queued_at, 3),
        }
        for item in queue.drain(limit)
    ]


def _count_reload(metrics: Metrics, holder: RuntimeHolder, result: ReloadResult) -> None:
    metrics.policy_reloaded(result.result)
    if result.result == "applied":
        metrics.learn_policy(holder.current.active.policy)


def _telemetry(
    options: ServeOptions,
    active: ActivePolicy,
    holder: RuntimeHolder,
    streams: StreamRegistry,
) -> Telemetry:
    """Tracing from the standard OTEL_* environment, metrics for /metrics, decision logs."""
    policy = active.policy
    tracing = Tracing.from_environment(os.environ, __version__)
    metrics = Metrics(policy.models, policy.clusters, policy.tiers)
    metrics.learn_policy(policy)
    runtime = holder.current
    store = runtime.accounting.store
    if isinstance(store, GuardedStore):
        guarded = store
        metrics.accounting.set_store_stats(lambda: dict(guarded.snapshot()))
    metrics.set_live_state(lambda: holder.current.fleet.snapshot(runtime.clock.now()))
    metrics.set_tracing_stats(tracing.stats)
    metrics.set_stream_count(lambda: streams.active)
    runtime.transition_listeners.append(
        lambda t: metrics.breaker_transition(t.cluster, t.old.value, t.new.value)
    )
    runtime.flag_listeners.append(lambda c: metrics.flag_changed(c.flag, c.on, c.source))
    runtime.rollback_listeners.append(
        lambda rolled: metrics.canary_rolled_back(rolled.route[1], rolled.route[0])
    )
    metrics.set_flag_states(lambda: holder.current.fleet.flags.snapshot())
    return Telemetry(tracing, metrics, _decision_log(options.decision_log))


def _decision_log(level_name: str) -> DecisionLog | None:
    """The decision log at ``level_name``, or None if off or below the log level."""
    if level_name == "off":
        return None
    level = logging.getLevelName(level_name.upper())
    if not logging.getLogger(DECISIONS_LOGGER).isEnabledFor(level):
        log.warning(
            "no decision log: its level %s is below the log level; "
            "start with --log-level %s to have it",
            level_name,
            level_name,
        )
        return None
    return DecisionLog(level)


@contextlib.contextmanager
def _decision_lines_first(decision_log: DecisionLog | None) -> Iterator[None]:
    """While serving, other log lines wait for the decision lines before them."""
    if decision_log is None:
        yield
        return
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(decision_log.before_other_line)
    try:
        yield
    finally:
        decision_log.flush()
        for handler in handlers:
            handler.removeFilter(decision_log.before_other_line)


class _RuntimeFlags:
    """The admin API's view of the running policy's flags."""

    def __init__(self, holder: RuntimeHolder) -> None:
        self._holder = holder

    def snapshot(self) -> dict[str, Any]:
        return self._holder.current.fleet.flags.snapshot()

    def names(self) -> frozenset[str]:
        return frozenset(self._holder.current.active.policy.flags)

    def set(self, name: str, on: bool, actor: str, reason: str, source: str) -> None:
        self._holder.current.set_flag(name, on, actor, reason, source)

    def set_canary(
        self, tier: str, model: str, weight_percent: float, actor: str, reason: str
    ) -> None:
        self._holder.current.set_canary_weight(tier, model, weight_percent, actor, reason)

    def canaries(self) -> dict[str, Any]:
        return self._holder.current.fleet.canaries.snapshot()

    def clusters(self) -> frozenset[str]:
        return frozenset(self._holder.current.active.policy.clusters)

    def force_breaker(self, cluster: str, state: str, actor: str, reason: str) -> None:
        self._holder.current.force_breaker(cluster, state, actor, reason)


def _admin_token() -> Secret | None:
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    return Secret(token) if token else None


async def _start_admin(address: str | None, app: web.Application) -> web.AppRunner | None:
    if address is None:
        return None
    host, _, port = address.rpartition(":")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    except OSError as error:
        await runner.cleanup()
        raise OSError(f"cannot listen on admin address {address}: {error.strerror}") from None
    return runner


async def _wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
