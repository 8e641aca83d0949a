"""A minimal OTLP/gRPC trace collector that counts the spans the sidecar exports.

The benchmark runs the sidecar with tracing on and a ratio sampler, exporting to this
sink, so the cost of sampling, recording and exporting spans is in the numbers. The
sink only decodes each export request and counts its spans; it runs on a small thread
pool inside the benchmark process, whose CPU time is not part of the results.
"""

import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class OtlpSink:
    """Accepts OTLP trace exports on ``127.0.0.1`` and counts spans and export calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans = 0
        self._exports = 0
        self._server: Any = None
        self.endpoint = ""
        """``http://127.0.0.1:<port>`` once started, for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""

    @property
    def spans(self) -> int:
        with self._lock:
            return self._spans

    @property
    def exports(self) -> int:
        with self._lock:
            return self._exports

    def start(self) -> str:
        """Listen on a free port; return the endpoint URL."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.method_handlers_generic_handler(
            _SERVICE,
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self._export,
                    request_deserializer=ExportTraceServiceRequest.FromString,
                    response_serializer=ExportTraceServiceResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.endpoint = f"http://127.0.0.1:{port}"
        return self.endpoint

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=1).wait()

    def _export(self, request: ExportTraceServiceRequest, context: Any) -> Any:
        spans = sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        with self._lock:
            self._spans += spans
            self._exports += 1
        return ExportTraceServiceResponse()
