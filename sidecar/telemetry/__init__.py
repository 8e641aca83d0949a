"""Telemetry: what happened to each request, for traces, metrics and logs.

The processor fills a :class:`~sidecar.telemetry.record.RequestRecord` as the request
goes through its phases; when the stream ends the record goes to the sinks (tracing,
metrics, the decision log). The core never calls telemetry.
"""
