"""The real stack for end-to-end tests: demo model servers, the sidecar, and Envoy.

One stack serves the whole session, started exactly as ``make run`` starts it: the
project's ``envoy/envoy.yaml`` and ``examples/policy.yaml`` unchanged. Its logs are
kept under ``test-artifacts/e2e/``. Each test starts with no faults, no recorded
requests, a running sidecar and Envoy's fail mode as the file sets it.
"""

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from sidecar_demo.fault_control import FaultControl
from sidecar_demo.specs import DEMO_FLEET
from sidecar_demo.stack import ENVOY_ADMIN, ENVOY_LISTENER, SIDECAR_ADMIN, DemoStack, StackLayout
from sidecar_demo.tokens import demo_tenant_token
from tests.conftest import DEMO_POLICY, ENVOY_CONFIG, ROOT
from tests.e2e.replicas import ReplicaFactory
from tests.fakes.otlp_receiver import CollectedSpan, OtlpReceiver

ENVOY = f"http://{ENVOY_LISTENER[0]}:{ENVOY_LISTENER[1]}"
ENVOY_ADMIN_URL = f"http://{ENVOY_ADMIN[0]}:{ENVOY_ADMIN[1]}"
SIDECAR_ADMIN_URL = f"http://{SIDECAR_ADMIN[0]}:{SIDECAR_ADMIN[1]}"
SERVER_URLS = {spec.name: spec.base_url for spec in DEMO_FLEET}


class BackgroundReceiver:
    """The OTLP receiver on its own event loop in a thread, for the whole session.

    Test event loops come and go; the sidecar exports spans whenever its batch is due,
    so the receiver lives on a loop of its own. Calls that touch it run on that loop.
    """

    def __init__(self) -> None:
        self.receiver = OtlpReceiver()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> str:
        self._thread.start()
        return self.call(self.receiver.start())

    def stop(self) -> None:
        self.call(self.receiver.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def do(self, action: Callable[[], None]) -> None:
        async def run() -> None:
            action()

        self.call(run())

    @property
    def spans(self) -> list[CollectedSpan]:
        return list(self.receiver.spans)


@pytest.fixture(scope="session")
def otlp() -> Iterator[BackgroundReceiver]:
    background = BackgroundReceiver()
    background.start()
    try:
        yield background
    finally:
        background.stop()


@pytest.fixture(scope="session")
def stack(otlp: BackgroundReceiver) -> Iterator[DemoStack]:
    tracing = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{otlp.receiver.address}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
        "OTEL_SERVICE_NAME": "ai-routing-sidecar",
    }
    layout = StackLayout(DEMO_POLICY, ENVOY_CONFIG, ROOT / "test-artifacts" / "e2e", tracing)
    demo = DemoStack(layout)
    demo.start()
    try:
        yield demo
    finally:
        demo.stop()


@dataclass
class Harness:
    """What a test drives: the app-facing HTTP client and the stack's controls."""

    stack: DemoStack
    http: aiohttp.ClientSession
    servers: dict[str, FaultControl]

    async def chat(
        self, key: str | None, model: str = "chat", **extra: Any
    ) -> aiohttp.ClientResponse:
        headers = {"authorization": f"Bearer {key}"} if key is not None else {}
        headers.update(extra.pop("headers", {}))
        document = {"model": model, "messages": [{"role": "user", "content": "Hello"}], **extra}
        return await self.http.post(f"{ENVOY}/v1/chat/completions", json=document, headers=headers)

    async def recorded(self, server: str) -> list[dict[str, Any]]:
        return await self.servers[server].recorded_requests()

    async def sidecar_state(self) -> dict[str, Any]:
        """The sidecar's live state, from ``/state`` on its admin port."""
        async with self.http.get(f"{SIDECAR_ADMIN_URL}/state") as response:
            state: dict[str, Any] = await response.json()
        return state

    async def sidecar_streams(self) -> dict[str, int]:
        streams: dict[str, int] = (await self.sidecar_state())["streams"]
        return streams

    async def set_fail_open(self, percent: int | None) -> None:
        await self.set_runtime("ai_sidecar.fail_open", "" if percent is None else str(percent))

    async def set_runtime(self, key: str, value: str) -> None:
        """Override an Envoy runtime key ('' drops the override)."""
        url = f"{ENVOY_ADMIN_URL}/runtime_modify?{key}={value}"
        async with self.http.post(url) as response:
            assert response.status == 200, await response.text()


def jwt_for(tenant: str) -> str:
    return demo_tenant_token(tenant, int(time.time()))


@pytest.fixture
async def harness(stack: DemoStack) -> AsyncIterator[Harness]:
    if stack.sidecar.pid is None:
        stack.sidecar.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        servers = {name: FaultControl(url, http) for name, url in SERVER_URLS.items()}
        for control in servers.values():
            await control.clear_fault()
            await control.clear_recorded()
        test_harness = Harness(stack, http, servers)
        yield test_harness
        await test_harness.set_fail_open(None)
        for control in servers.values():
            await control.clear_fault()


@pytest.fixture
async def fresh(harness: Harness) -> AsyncIterator[Harness]:
    """The harness, and afterwards a sidecar restarted with no breaker or pool state.

    For tests that trip breakers or fill pools: the state they leave must not reach the
    next test.
    """
    yield harness
    for control in harness.servers.values():
        await control.clear_fault()
    harness.stack.sidecar.stop()
    harness.stack.sidecar.start()


@pytest.fixture
def start_replicas(stack: DemoStack) -> Iterator[ReplicaFactory]:
    """Start sidecar replicas with their own Envoys; all stopped after the test.

    ``start_replicas(count, policy=DEMO_POLICY, extra_env=None, envoy_config=ENVOY_CONFIG)``
    returns the started :class:`~sidecar_demo.stack.ReplicaStack` objects (see
    tests/e2e/replicas.py). The session stack must be up: its model servers serve them.
    """
    factory = ReplicaFactory(stack.layout.log_dir)
    try:
        yield factory
    finally:
        factory.stop_all()
