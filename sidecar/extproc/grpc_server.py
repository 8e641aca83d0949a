"""Starting and stopping the gRPC server that carries ext_proc and health checks."""

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from sidecar.extproc.server import SERVICE_NAME, ExternalProcessorService

_EXTRA_MESSAGE_BYTES = 64 * 1024
_MIN_MESSAGE_BYTES = 8 * 1024 * 1024
"""Envoy may send bodies up to its own buffer limit (2 MiB in envoy/envoy.yaml), even
above the policy's limit; those must reach the sidecar to get a clear 413, not fail the
stream (which Envoy would turn into its fail mode)."""


class GrpcServer:
    """The sidecar's gRPC server: ext_proc plus the standard health service.

    ``address`` is a gRPC bind address: ``host:port``, ``unix:/path`` or
    ``unix-abstract:name``. A TCP port is bound with ``SO_REUSEPORT`` only when
    ``share_port`` is set (workers of one sidecar); otherwise a port another process
    listens on is refused, as gRPC would otherwise share it silently.
    """

    def __init__(
        self,
        service: ExternalProcessorService,
        address: str,
        max_body_bytes: int,
        share_port: bool = False,
    ):
        limit = max(max_body_bytes + _EXTRA_MESSAGE_BYTES, _MIN_MESSAGE_BYTES)
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 1 if share_port else 0),
            ]
        )
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(service, self._server)
        try:
            bound = self._server.add_insecure_port(address)
        except RuntimeError as error:
            raise OSError(f"cannot listen on {address}: {error}") from None
        if bound == 0:
            raise OSError(f"cannot listen on {address}")
        self.address = address

    async def start(self) -> None:
        """Accept streams and report SERVING."""
        await self._server.start()
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, then let open streams finish for up to ``grace_s``."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)
