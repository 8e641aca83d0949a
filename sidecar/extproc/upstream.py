"""One upstream attempt of a failover chain: a processor per upstream ext_proc stream.

When a request may fail over, Envoy sends it to an aggregate cluster whose upstream
ext_proc filter opens one stream per attempt (see envoy/README.md, "Failover"):

- request headers: which hop (model cluster) Envoy picked for this attempt, from the
  endpoint metadata; the hop must be one the request phase allowed (its plan);
- request body: the body as the client sent it (Envoy keeps the original for every
  attempt), rewritten with the hop's model, and the hop's credential (or none);
- response headers: the attempt's status feeds the hop's breaker.

An attempt that ends without response headers is reported to the runtime, which counts
it as a failure once the request gets its answer from a later hop (or Envoy's error).

Envoy does not retry a direct answer from this filter, so a refused hop ends the whole
request: the refusals here are for gateway misconfiguration only.
"""

import logging
from typing import Any

from sidecar.core.breaker import Permit
from sidecar.core.classify import RoutedPath, classify_path
from sidecar.core.outcomes import classify
from sidecar.domain.api import ApiFamily, Endpoint
from sidecar.domain.ids import ClusterName
from sidecar.domain.outcome import Rejection
from sidecar.domain.policy import ClusterSpec
from sidecar.engine.runtime import RoutingRuntime
from sidecar.extproc import codec
from sidecar.providers.body import parse_body_for
from sidecar.providers.upstream_request import upstream_request

log = logging.getLogger("sidecar.failover")


class UpstreamProcessor:
    """Answers the ext_proc messages of one upstream attempt, phase by phase."""

    def __init__(self, runtime: RoutingRuntime) -> None:
        self._runtime = runtime
        self._family = ApiFamily.OPENAI
        self._routed = RoutedPath(Endpoint.OPENAI_CHAT, Endpoint.OPENAI_CHAT.path)
        self._plan: codec.FailoverPlan | None = None
        self._hop: ClusterSpec | None = None
        self._permit: Permit | None = None
        self._sent_at = 0.0
        self.outcome = "open"
        """How the attempt ended up: open, sent:<hop>, answered:<status>, refused:<code>."""

    async def handle(self, message: Any) -> Any:
        """The response to one ``ProcessingRequest``."""
        phase = message.WhichOneof("request")
        if phase == "request_headers":
            return self._on_request_headers(message)
        if phase == "request_body" and self._hop is not None:
            return self._on_request_body(self._hop, message.request_body)
        if phase == "response_headers":
            self._on_response_headers(message.response_headers)
        return codec.continue_message(message)

    def failed(self, code: str) -> None:
        """Nothing to note: attempts have no record of their own."""
        self.outcome = f"failed:{code}"

    def close(self) -> None:
        """An attempt that ends with its permit still out got no response headers."""
        permit, self._permit = self._permit, None
        if permit is None or self._plan is None:
            return
        elapsed = self._runtime.clock.now() - self._sent_at
        self._runtime.attempt_unanswered(self._plan.call, permit, elapsed)

    def _on_request_headers(self, message: Any) -> Any:
        self._plan = codec.read_failover_plan(message.metadata_context)
        if self._plan is None:
            return self._refuse(*_misconfigured("the request carries no failover plan"))
        routed = classify_path(self._plan.path, self._runtime.active.policy)
        if routed is None:
            return self._refuse(*_misconfigured("the failover plan names no AI endpoint"))
        self._routed = routed
        self._family = routed.endpoint.family
        hop = codec.read_hop(message)
        if hop is None:
            return self._refuse(*_misconfigured("the upstream endpoint names no hop"))
        spec = self._runtime.active.policy.clusters.get(ClusterName(hop))
        if spec is None or hop not in self._plan.hops:
            return self._refuse(*_hop_refused(hop, self._plan.hops))
        self._hop = spec
        return codec.continue_request_headers()

    def _on_request_body(self, hop: ClusterSpec, http_body: Any) -> Any:
        if not http_body.end_of_stream:
            return self._refuse(*_misconfigured("the request body came in parts, not buffered"))
        routed = self._routed
        body = parse_body_for(routed.endpoint, http_body.body, routed.service_model)
        if isinstance(body, Rejection):
            return self._refuse(body)
        runtime = self._runtime
        prepared = upstream_request(routed.endpoint, routed.path, hop, body)
        if isinstance(prepared, Rejection):
            return self._refuse(prepared)
        content, path = prepared
        assert self._plan is not None
        self._permit = runtime.claim_reserved(self._plan.call, hop.name)
        if self._permit is None:
            self._permit = runtime.start_attempt(hop.name)
        if self._permit is None:
            log.info("attempt past an open breaker", extra={"cluster": hop.name})
        self._sent_at = runtime.clock.now()
        self.outcome = f"sent:{hop.name}"
        policy = runtime.active.policy
        return codec.hop_request_body(
            content,
            runtime.active.credentials.get(hop.name),
            policy.cluster_header,
            policy.api_key_source.header,
            path,
        )

    def _on_response_headers(self, http_headers: Any) -> None:
        status = codec.read_status(http_headers)
        self.outcome = f"answered:{status}"
        permit, self._permit = self._permit, None
        if permit is None:
            return
        runtime = self._runtime
        elapsed = runtime.clock.now() - self._sent_at
        slow_after = runtime.fleet.breakers[permit.cluster].config.slow_call_s
        call = self._plan.call if self._plan is not None else None
        runtime.finish_call(permit, classify(status, elapsed, slow_after), call)

    def _refuse(self, rejection: Rejection, detail: str = "") -> Any:
        self.outcome = f"refused:{rejection.code}"
        level = logging.ERROR if rejection.status >= 500 else logging.INFO
        log.log(level, "upstream attempt refused: %s", detail or rejection.message)
        return codec.reject(rejection, self._family)


def _misconfigured(what: str) -> tuple[Rejection, str]:
    rejection = Rejection(
        503,
        "server_error",
        "failover_misconfigured",
        "The gateway's failover configuration is incomplete; the request was not sent.",
    )
    return rejection, f"{what}; see envoy/README.md, 'Failover'"


def _hop_refused(hop: str, allowed: tuple[str, ...]) -> tuple[Rejection, str]:
    rejection = Rejection(
        502,
        "server_error",
        "failover_hop_refused",
        "The gateway chose an upstream this request may not use; the request was not sent.",
    )
    detail = (
        f"Envoy picked cluster '{hop}' for a request that may only go to {', '.join(allowed)}; "
        "regenerate the aggregate clusters (python -m sidecar envoy-chains)"
    )
    return rejection, detail
