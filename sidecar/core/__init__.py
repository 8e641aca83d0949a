"""The routing core: pure functions and values, no I/O.

Nothing in this package imports asyncio, gRPC, Envoy's types, OpenTelemetry or
Prometheus, reads the clock or draws random numbers; those arrive as arguments.
"""
