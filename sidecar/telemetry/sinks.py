"""Where a finished request's record goes: its span, the metrics, the decision log.

:class:`Telemetry` bundles the sinks for the processor: :meth:`begin` when an AI
request's headers arrive (the span starts, with the caller's trace as parent), and
:meth:`end` once its stream is over. A sink that fails is logged and skipped; routing
never waits for, or fails because of, telemetry.
"""

import logging
from collections.abc import Mapping
from typing import Any

from sidecar.telemetry.decision_log import DecisionLog
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.record import RequestRecord
from sidecar.telemetry.tracing import SpanHandle, Tracing

log = logging.getLogger("sidecar.telemetry")


class Telemetry:
    """The sinks of every request record."""

    def __init__(
        self, tracing: Tracing, metrics: Metrics | None, decision_log: DecisionLog | None
    ) -> None:
        self.tracing = tracing
        self.metrics = metrics
        self.decision_log = decision_log

    @classmethod
    def disabled(cls) -> "Telemetry":
        """No spans, no metrics, no decision log (tests of routing alone)."""
        return cls(Tracing.disabled(), None, None)

    def begin(self, headers: Mapping[str, str], path: str) -> SpanHandle:
        """Start the request's span, a child of the trace its headers carry."""
        return self.tracing.start(headers, path)

    def end(self, record: RequestRecord, span: SpanHandle) -> None:
        """Hand the finished record to every sink."""
        try:
            self.tracing.finish(span, record)
        except Exception:
            log.exception("tracing sink failed")
        if self.metrics is not None:
            try:
                self.metrics.observe(record)
            except Exception:
                log.exception("metrics sink failed")
        if self.decision_log is not None:
            try:
                self.decision_log.write(decision_fields(record, span))
            except Exception:
                log.exception("decision log sink failed")


def decision_fields(record: RequestRecord, span: SpanHandle) -> dict[str, Any]:
    """The decision log line's fields: who, what, where, why, and the trace to look at."""
    fields: dict[str, Any] = {
        "trace_id": span.trace_id_hex or None,
        "path": record.path,
        "tenant": record.tenant,
        "tier": record.tier,
        "model": record.model,
        "cluster": record.cluster,
        "upstream_model": record.upstream_model,
        "rung": record.rung,
        "reason": record.reason,
        "outcome": record.outcome,
        "error_code": record.error_code,
        "status": record.status,
        "pool": record.pool,
        "priority": record.priority,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cost_usd": record.cost_usd,
    }
    duration = record.duration_s
    if duration is not None:
        fields["duration_ms"] = round(duration * 1000, 3)
    return {name: value for name, value in fields.items() if value is not None}
