"""One HTTP request's trip through the sidecar: a processor per ext_proc stream.

Envoy opens one gRPC stream per HTTP request and sends a message per phase. The
processor answers each: on request headers it identifies the tenant and checks what
can be checked without the body; on the request body it parses the model, asks the
core for a decision and turns it into mutations. It keeps the per-request context
and nothing outside it, so a stream that ends for any reason leaves nothing behind.
"""

import logging
from dataclasses import dataclass
from typing import Any

from sidecar.core.identity import PresentedIdentity, identify
from sidecar.core.router import ActivePolicy, RouteRequest, route
from sidecar.domain.api import ApiFamily, Endpoint, endpoint_for_path
from sidecar.domain.outcome import (
    Rejection,
    body_too_large,
    malformed_body,
    method_not_allowed,
)
from sidecar.domain.policy import TenantSpec
from sidecar.extproc import codec
from sidecar.providers.body import parse_request_body, rewrite_model

log = logging.getLogger("sidecar.routing")


@dataclass(frozen=True, slots=True)
class _AwaitingBody:
    """Headers accepted: the tenant is known and the body is expected."""

    tenant: TenantSpec
    endpoint: Endpoint


class StreamProcessor:
    """Answers the ext_proc messages of one HTTP request, phase by phase."""

    def __init__(self, active: ActivePolicy) -> None:
        self._active = active
        self._awaiting: _AwaitingBody | None = None
        self.outcome = "open"
        """How the request ended up: open, passed_through, rejected:<code>, routed."""

    def handle(self, request: Any) -> Any:
        """The response to one ``ProcessingRequest``."""
        phase = request.WhichOneof("request")
        if phase == "request_headers":
            return self._on_request_headers(request)
        if phase == "request_body":
            return self._on_request_body(request)
        return codec.continue_message(request)

    def _on_request_headers(self, request: Any) -> Any:
        head = codec.read_head(request.request_headers)
        endpoint = endpoint_for_path(head.path)
        if endpoint is None:
            self.outcome = "passed_through"
            return codec.pass_through()
        policy = self._active.policy
        early_rejection = self._check_head(head, endpoint, request.request_headers.end_of_stream)
        if early_rejection is not None:
            return self._reject(early_rejection, endpoint.family)
        presented = PresentedIdentity(
            api_key_header=head.headers.get(policy.api_key_source.header),
            verified_claims=codec.read_verified_claims(request.metadata_context, policy.jwt_source),
        )
        tenant = identify(presented, policy)
        if isinstance(tenant, Rejection):
            return self._reject(tenant, endpoint.family)
        self._awaiting = _AwaitingBody(tenant, endpoint)
        return codec.continue_request_headers()

    def _check_head(
        self, head: codec.RequestHead, endpoint: Endpoint, end_of_stream: bool
    ) -> Rejection | None:
        if head.method != "POST":
            return method_not_allowed(head.method, endpoint.path)
        limit = self._active.policy.max_body_bytes
        if head.content_length is not None and head.content_length > limit:
            return body_too_large(limit)
        if end_of_stream:
            return malformed_body("The request has no body; send a JSON object.")
        return None

    def _on_request_body(self, request: Any) -> Any:
        awaiting = self._awaiting
        if awaiting is None:
            return codec.continue_message(request)
        self._awaiting = None
        http_body = request.request_body
        family = awaiting.endpoint.family
        if not http_body.end_of_stream:
            log.error("request body is not buffered: set request_body_mode BUFFERED in Envoy")
            return self._reject(_misconfigured_body_mode(), family)
        policy = self._active.policy
        if len(http_body.body) > policy.max_body_bytes:
            return self._reject(body_too_large(policy.max_body_bytes), family)
        body = parse_request_body(http_body.body)
        if isinstance(body, Rejection):
            return self._reject(body, family)
        decision = route(RouteRequest(awaiting.tenant, awaiting.endpoint, body.model), self._active)
        if isinstance(decision, Rejection):
            return self._reject(decision, family)
        self.outcome = "routed"
        log.debug(
            "routed",
            extra={
                "tenant": decision.tenant,
                "tier": decision.tier,
                "model": decision.requested_model,
                "cluster": decision.cluster,
                "reason": decision.reason,
            },
        )
        return codec.route_request_body(
            decision,
            rewrite_model(body, decision.upstream_model),
            policy.cluster_header,
            policy.api_key_source.header,
        )

    def _reject(self, rejection: Rejection, family: ApiFamily) -> Any:
        self.outcome = f"rejected:{rejection.code}"
        return codec.reject(rejection, family)


def _misconfigured_body_mode() -> Rejection:
    return Rejection(
        500,
        "server_error",
        "sidecar_misconfigured",
        "The routing sidecar received the request body in parts; "
        "Envoy's ext_proc request_body_mode must be BUFFERED.",
    )
