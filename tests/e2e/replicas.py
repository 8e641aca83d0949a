"""More sidecar replicas, each with its own Envoy, beside the session's demo stack.

The ``start_replicas`` fixture (tests/e2e/conftest.py) yields a :class:`ReplicaFactory`:
a test calls it with how many replicas it wants, a policy and extra environment, and
gets running :class:`~sidecar_demo.stack.ReplicaStack` objects, numbered from 1 (ports
and sockets: :class:`~sidecar_demo.stack.ReplicaEndpoints`). They share the demo
stack's model servers, and whatever else ``extra_env`` points them all at (one Redis).
Every replica started is stopped after the test; logs and the rendered Envoy config of
replica ``i`` are kept in ``test-artifacts/e2e/replica-<i>/``.
"""

from collections.abc import Mapping
from pathlib import Path

import aiohttp

from sidecar_demo.stack import ReplicaStack, StackLayout
from tests.conftest import DEMO_POLICY, ENVOY_CONFIG


async def paid_chat(http: aiohttp.ClientSession, envoy_url: str) -> tuple[int, str, bytes]:
    """The demo paid tenant asks one Envoy for ``chat``: status, content type and body."""
    document = {"model": "chat", "messages": [{"role": "user", "content": "Hello"}]}
    async with http.post(
        f"{envoy_url}/v1/chat/completions",
        json=document,
        headers={"authorization": "Bearer sk-demo-paid"},
    ) as response:
        return response.status, response.content_type, await response.read()


class ReplicaFactory:
    """Starts replicas for one test and stops them all afterwards."""

    def __init__(self, log_root: Path) -> None:
        self.log_root = log_root
        self.started: list[ReplicaStack] = []

    def __call__(
        self,
        count: int,
        policy: Path = DEMO_POLICY,
        extra_env: Mapping[str, str] | None = None,
        envoy_config: Path = ENVOY_CONFIG,
    ) -> list[ReplicaStack]:
        """Start ``count`` replicas, numbered on from the last one this test started.

        ``envoy_config`` is the template each replica's config is rendered from; its
        generated failover chains must match ``policy``'s.
        """
        first = len(self.started) + 1
        replicas = []
        for index in range(first, first + count):
            layout = StackLayout(
                policy, envoy_config, self.log_root / f"replica-{index}", dict(extra_env or {})
            )
            replica = ReplicaStack(index, layout)
            replica.start()  # stops its own parts if it fails
            self.started.append(replica)
            replicas.append(replica)
        return replicas

    def stop_all(self) -> None:
        for replica in reversed(self.started):
            replica.stop()
        self.started.clear()
