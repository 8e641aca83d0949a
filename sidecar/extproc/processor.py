"""One HTTP request's trip through the sidecar: a processor per ext_proc stream.

Envoy opens one gRPC stream per HTTP request and sends a message per phase; the
processor answers each:

- request headers: identify the tenant (and the batch job it names), check what needs
  no body;
- request body: answer from the cost cache when the answer is fixed, count the request
  on its rate limits and budgets (:mod:`sidecar.extproc.cost_control`), take a slot in
  the tier's pool (waiting or shed), route through the chain (skipping clusters whose
  breaker is open or that are full, and the primary when a budget downgrades the
  request), or fall down the ladder (cached answer, degraded answer, queue) when no
  cluster can take it;
- response headers: feed the chosen cluster's breaker, say which rung answered, and
  ask for the body (streamed, or buffered only to translate a whole answer);
- response body: read the token usage (and the cost), keep the answer for the answer
  cache, translate it back to the client's API when another API family served it.

When the chosen cluster has usable clusters after it in the chain, the request is sent
to the aggregate cluster of that chain suffix and Envoy fails over inside the request
(see :mod:`sidecar.extproc.upstream`): then each attempt feeds its own cluster's
breaker, and the response headers name the cluster that answered.

The processor holds the request's slot, breaker permit and budget reservations;
:meth:`close` gives them back (settling the budgets with the usage the answer
reported) and hands the request's record to telemetry, and the stream loop calls it however
the stream ends.
"""

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.core.answer_cache import CachedAnswer, cache_key
from sidecar.core.breaker import CallResult, Permit
from sidecar.core.bulkhead import Slot
from sidecar.core.chains import envoy_target
from sidecar.core.classify import RoutedPath, classify_path
from sidecar.core.degraded_queue import QueuedRequest
from sidecar.core.identity import PresentedIdentity, identify
from sidecar.core.outcomes import classify
from sidecar.core.priority import priority_of
from sidecar.core.router import RouteRequest, Unavailable
from sidecar.domain.api import Endpoint
from sidecar.domain.ids import ClusterName, ModelName
from sidecar.domain.objective import TaskFacts
from sidecar.domain.outcome import (
    Decision,
    Rejection,
    body_too_large,
    degraded_queue_full,
    malformed_body,
    method_not_allowed,
    no_cluster_available,
    shed,
    unknown_endpoint,
)
from sidecar.domain.policy import ClusterSpec, TenantSpec
from sidecar.engine.runtime import RoutingRuntime, Shed
from sidecar.extproc import codec
from sidecar.extproc.answer_watch import AnswerWatch
from sidecar.extproc.cost_control import CostControl, job_of
from sidecar.extproc.notes import RequestNotes
from sidecar.providers.body import RequestBody, parse_body_for, rewrite_model, wants_stream
from sidecar.providers.request_facts import max_output_tokens
from sidecar.providers.response_rewrite import plan_rewrite
from sidecar.providers.synthetic import answer_text, can_synthesize, synthesize
from sidecar.providers.task import task_facts
from sidecar.providers.translate import needs_translation
from sidecar.providers.upstream_request import upstream_request
from sidecar.telemetry.record import RequestRecord
from sidecar.telemetry.sinks import Telemetry
from sidecar.telemetry.tracing import SpanHandle

log = logging.getLogger("sidecar.routing")


@dataclass
class _Request:
    """What the processor knows about its request, phase after phase."""

    tenant: TenantSpec
    routed: RoutedPath
    headers: Mapping[str, str]
    body: RequestBody | None = None
    slot: Slot | None = None
    decision: Decision | None = None
    permit: Permit | None = None
    failover_call: str | None = None
    sent_at: float = 0.0
    answer_key: str | None = None
    watch: AnswerWatch | None = None
    cost: CostControl | None = None
    upstream_status: int | None = None

    @property
    def endpoint(self) -> Endpoint:
        return self.routed.endpoint


class StreamProcessor:
    """Answers the ext_proc messages of one HTTP request, phase by phase."""

    def __init__(self, runtime: RoutingRuntime, telemetry: Telemetry | None = None) -> None:
        self._runtime = runtime
        self._telemetry = telemetry or Telemetry.disabled()
        self._request: _Request | None = None
        self._notes = RequestNotes(runtime)
        self._span: SpanHandle | None = None
        self.outcome = "open"
        """How the request ended up: open, passed_through, rejected:<code>, routed, <rung>."""

    async def handle(self, message: Any) -> Any:
        """The response to one ``ProcessingRequest``."""
        phase = message.WhichOneof("request")
        if phase == "request_headers":
            return self._on_request_headers(message)
        if phase == "request_body" and self._request is not None:
            return await self._on_request_body(self._request, message.request_body)
        if phase == "response_headers" and self._request is not None:
            return self._on_response_headers(self._request, message)
        if phase == "response_body" and self._request is not None:
            return self._on_response_body(self._request, message.response_body)
        return codec.continue_message(message)

    def failed(self, code: str) -> None:
        """The sidecar itself failed on this request (answered 500)."""
        self._notes.failed(code)

    def close(self) -> None:
        """Give back the slot and the breaker permit, whatever ended the stream."""
        self._release()
        record = self._notes.end()
        if record is None:
            return
        self._runtime.slo_outcome(
            record.model, record.outcome, record.status, record.time_to_first_byte_s
        )
        self._observe_latency(record)
        if self._span is not None:
            self._telemetry.end(record, self._span)

    def _observe_latency(self, record: RequestRecord) -> None:
        """An answer without a server error tells its cluster's live latency."""
        ttft, total = record.time_to_first_byte_s, record.duration_s
        if record.outcome != "routed" or record.cluster is None or ttft is None:
            return
        if total is None or (record.status or 0) >= 500:
            return
        now = self._runtime.clock.now()
        self._runtime.fleet.latency.observe(record.cluster, ttft, total, now)

    def _release(self) -> None:
        """Give everything back; the pool slot last, and even if a step before it fails."""
        request, self._request = self._request, None
        if request is None:
            return
        try:
            if request.permit is not None:
                permit, request.permit = request.permit, None
                self._runtime.finish_call(permit, self._unanswered(request, permit))
            if request.failover_call is not None:
                call, request.failover_call = request.failover_call, None
                self._notes.transitions(tuple(self._runtime.failover_transitions(call)))
                self._runtime.close_failover(call)
            if request.cost is not None:
                watch = request.watch
                request.cost.settle(watch.usage if watch else None, request.upstream_status)
            if request.decision is not None and request.decision.variant is not None:
                self._notes.variant_outcome(request.decision)
        finally:
            if request.slot is not None:
                slot, request.slot = request.slot, None
                self._runtime.release_slot(slot)

    # -- request headers -------------------------------------------------------------

    def _on_request_headers(self, message: Any) -> Any:
        head = codec.read_head(message.request_headers)
        policy = self._runtime.active.policy
        routed = classify_path(head.path, policy)
        if routed is None:
            self.outcome = "passed_through"
            return codec.pass_through()
        endpoint = routed.endpoint
        self._notes.begin(routed.path, endpoint.family.value)
        self._span = self._telemetry.begin(head.headers, routed.path)
        if endpoint is Endpoint.JSON_SERVICE and routed.service_model is None:
            return self._reject(unknown_endpoint(routed.path), endpoint)
        early = self._check_head(head, endpoint, message.request_headers.end_of_stream)
        if early is not None:
            return self._reject(early, endpoint)
        presented = PresentedIdentity(
            api_key_header=head.headers.get(policy.api_key_source.header),
            verified_claims=codec.read_verified_claims(message.metadata_context, policy.jwt_source),
            token_failure=codec.read_token_failure(message.metadata_context, policy.jwt_source),
        )
        tenant = identify(presented, policy)
        if isinstance(tenant, Rejection):
            return self._reject(tenant, endpoint)
        job = job_of(head.headers, policy.jobs)
        if isinstance(job, Rejection):
            return self._reject(job, endpoint)
        cost = CostControl(self._runtime, self._notes, tenant, job)
        self._request = _Request(tenant, routed, head.headers, cost=cost)
        self._notes.tenant(tenant)
        return codec.continue_request_headers()

    def _check_head(
        self, head: codec.RequestHead, endpoint: Endpoint, end_of_stream: bool
    ) -> Rejection | None:
        if head.method != "POST":
            return method_not_allowed(head.method, head.path.partition("?")[0])
        limit = self._runtime.active.policy.max_body_bytes
        if head.content_length is not None and head.content_length > limit:
            return body_too_large(limit)
        if end_of_stream:
            return malformed_body("The request has no body; send a JSON object.")
        return None

    # -- request body ----------------------------------------------------------------

    async def _on_request_body(self, request: _Request, http_body: Any) -> Any:
        if not http_body.end_of_stream:
            log.error("request body is not buffered: set request_body_mode BUFFERED in Envoy")
            return self._reject(_misconfigured_body_mode(), request.endpoint)
        limit = self._runtime.active.policy.max_body_bytes
        if len(http_body.body) > limit:
            return self._reject(body_too_large(limit), request.endpoint)
        body = parse_body_for(request.endpoint, http_body.body, request.routed.service_model)
        if isinstance(body, Rejection):
            return self._reject(body, request.endpoint)
        request.body = body
        self._notes.body(body.model, wants_stream(body, request.endpoint))
        cost = request.cost
        assert cost is not None
        cached = cost.cached_answer(request.endpoint, body)
        if cached is not None:
            hit = ((codec.COST_CACHE_HEADER, "hit"),)
            return self._answer(200, cached.raw, "application/json", "cost_cache", hit)
        refused = await cost.admit(request.endpoint, body, len(http_body.body))
        if refused is None:
            refused = await self._take_slot(request)
        if refused is not None:
            return self._reject(refused, request.endpoint)
        task = self._task_facts(request, body, len(http_body.body))
        outcome = self._runtime.decide(
            RouteRequest(
                request.tenant,
                request.endpoint,
                body.model,
                cost.downgrade_reason,
                request.headers,
                task,
            )
        )
        if isinstance(outcome, Rejection):
            return self._reject(outcome, request.endpoint)
        if isinstance(outcome, Unavailable):
            return self._descend_ladder(request, body, outcome)
        return self._send_upstream(request, body, outcome)

    def _task_facts(self, request: _Request, body: RequestBody, size: int) -> TaskFacts | None:
        """The task facts of a request for a model with an objective (else None)."""
        policy = self._runtime.active.policy
        spec = policy.models.get(ModelName(body.model))
        if spec is None or spec.objective is None:
            return None
        output = max_output_tokens(request.endpoint, body, policy.assumed_max_tokens)
        facts = task_facts(request.endpoint, body, request.headers, spec.objective, size, output)
        self._notes.task(facts.task)
        return facts

    async def _take_slot(self, request: _Request) -> Rejection | None:
        policy = self._runtime.active.policy
        tier = policy.tiers.get(request.tenant.tier)
        if tier is None or tier.pool is None:
            return None
        priority = priority_of(
            tier, request.headers, policy.priority_rules, request.tenant.tenant_id
        )
        ask = self._runtime.new_ask(request.tenant.tenant_id, priority)
        admitted = await self._runtime.admit(tier.pool, ask)
        self._notes.pool(tier.pool, priority, admitted)
        if isinstance(admitted, Shed):
            log.info(
                "shed",
                extra={
                    "tenant": request.tenant.tenant_id,
                    "pool": tier.pool,
                    "priority": priority,
                    "reason": admitted.reason,
                },
            )
            return shed(admitted.status, admitted.reason, admitted.retry_after_s)
        request.slot = admitted
        return None

    def _send_upstream(self, request: _Request, body: RequestBody, decision: Decision) -> Any:
        runtime = self._runtime
        prepared = self._prepare(request, body, decision)
        if isinstance(prepared, Rejection):
            return self._reject(prepared, request.endpoint)
        content, path = prepared
        request.decision = decision
        self._notes.decision(decision)
        plan = None
        if decision.hops > 1:
            # Each attempt takes its own permit (sidecar.extproc.upstream).
            request.failover_call = runtime.open_failover(runtime.start_call(decision))
            plan = codec.FailoverPlan(
                request.failover_call, decision.failover_hops, request.routed.path
            )
        else:
            request.permit = runtime.start_call(decision)
        request.sent_at = runtime.clock.now()
        request.answer_key = self._answer_key(request, body)
        self.outcome = decision.rung
        log.debug(
            "routed",
            extra={
                "tenant": decision.tenant,
                "tier": decision.tier,
                "model": decision.requested_model,
                "cluster": decision.cluster,
                "failover": list(decision.failover_hops[1:]),
                "reason": decision.reason,
            },
        )
        policy = runtime.active.policy
        return codec.route_request_body(
            decision,
            content,
            policy.cluster_header,
            policy.api_key_source.header,
            target=envoy_target(decision.chain_rest or (decision.cluster,), decision.hops),
            plan=plan,
            path=path,
            trace_headers=self._trace_headers(),
            log_fields=self._notes.log_fields(),
        )

    def _trace_headers(self) -> dict[str, str]:
        """W3C trace context naming the sidecar's span, for the upstream request."""
        span = self._span
        headers: dict[str, str] = {}
        if span is None:
            return headers
        traceparent, tracestate = span.traceparent(), span.tracestate()
        if traceparent:
            headers["traceparent"] = traceparent
        if tracestate:
            headers["tracestate"] = tracestate
        return headers

    def _prepare(
        self, request: _Request, body: RequestBody, decision: Decision
    ) -> tuple[bytes, str] | Rejection:
        """The body and path Envoy keeps for the upstream call.

        With failover, every attempt gets this same copy and the upstream filter
        prepares it for its hop, so it stays in the client's API; every hop is checked
        here first, so a request no hop can take is the client's 400, never a failed
        attempt against a cluster's breaker. Otherwise it is prepared here for the one
        cluster.
        """
        clusters = self._runtime.active.policy.clusters
        endpoint, path = request.endpoint, request.routed.path
        if decision.hops == 1:
            return upstream_request(endpoint, path, clusters[decision.cluster], body)
        for hop in decision.failover_hops:
            if not needs_translation(endpoint, clusters[hop].provider):
                continue  # only a translation can refuse a request
            prepared = upstream_request(endpoint, path, clusters[hop], body)
            if isinstance(prepared, Rejection):
                return prepared
        first = clusters[decision.cluster]
        if not first.provider.rewrites_model:
            return upstream_request(endpoint, path, first, body)
        return rewrite_model(body, decision.upstream_model), path

    def _answer_key(self, request: _Request, body: RequestBody) -> str | None:
        spec = self._runtime.active.policy.models[_model(body)].answer_cache
        keepable = can_synthesize(request.endpoint) or request.endpoint is Endpoint.JSON_SERVICE
        if spec is None or not keepable:
            return None
        return cache_key(
            spec, request.tenant.tenant_id, _model(body), body.document, request.headers
        )

    # -- the degradation ladder ------------------------------------------------------

    def _descend_ladder(self, request: _Request, body: RequestBody, out: Unavailable) -> Any:
        runtime = self._runtime
        endpoint = request.endpoint
        stream = wants_stream(body, endpoint)
        log.warning(
            "no cluster available",
            extra={"model": out.requested_model, "skipped": [list(s) for s in out.skipped]},
        )
        cached = self._cached_answer(request, body)
        if cached is not None and cached.raw:
            return self._answer(200, cached.raw, "application/json", "cache")
        if cached is not None:
            content, content_type = synthesize(endpoint, cached.text, cached.model, stream)
            return self._answer(200, content, content_type, "cache")
        degraded = runtime.active.policy.models[out.requested_model].degraded
        if degraded is not None and degraded.json is not None:
            return self._answer(200, degraded.json, "application/json", "degraded")
        if degraded is not None and degraded.message and can_synthesize(endpoint):
            content, content_type = synthesize(endpoint, degraded.message, "degraded", stream)
            return self._answer(200, content, content_type, "degraded")
        queue = runtime.queue_for(out.requested_model)
        if queue is not None:
            return self._park(request, body, out)
        wait = runtime.fleet.seconds_until_any_admits(out.skipped, runtime.clock.now())
        return self._reject(no_cluster_available(out.requested_model, wait), endpoint)

    def _cached_answer(self, request: _Request, body: RequestBody) -> CachedAnswer | None:
        key = self._answer_key(request, body)
        cache = self._runtime.cache_for(_model(body))
        if key is None or cache is None:
            return None
        return cache.get(key, self._runtime.clock.now())

    def _park(self, request: _Request, body: RequestBody, out: Unavailable) -> Any:
        runtime = self._runtime
        queue = runtime.queue_for(out.requested_model)
        assert queue is not None
        request_id = f"queued-{uuid.uuid4().hex}"
        parked = QueuedRequest(
            request_id,
            request.tenant.tenant_id,
            out.requested_model,
            request.routed.path,
            body.document,
            runtime.clock.now(),
        )
        if not queue.park(parked):
            return self._reject(degraded_queue_full(out.requested_model), request.endpoint)
        document = {
            "id": request_id,
            "object": "queued_request",
            "status": "queued",
            "message": "No model is available now; the request was queued for later processing.",
        }
        return self._answer(202, json.dumps(document).encode(), "application/json", "queued")

    def _answer(
        self,
        status: int,
        body: bytes,
        content_type: str,
        rung: str,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        self.outcome = rung
        self._notes.answered_here(status, rung)
        return codec.answer(status, body, content_type, rung, extra_headers)

    # -- response --------------------------------------------------------------------

    def _on_response_headers(self, request: _Request, message: Any) -> Any:
        status = codec.read_status(message.response_headers)
        request.upstream_status = status
        runtime = self._runtime
        if request.permit is not None:
            elapsed = runtime.clock.now() - request.sent_at
            slow_after = runtime.fleet.breakers[request.permit.cluster].config.slow_call_s
            self._notes.transitions(
                runtime.finish_call(request.permit, classify(status, elapsed, slow_after))
            )
            request.permit = None
        # Only a failover request can be answered by another cluster than the chosen one.
        hop = codec.read_hop(message) if request.failover_call is not None else None
        if request.failover_call is not None:
            runtime.failover_answered(request.failover_call)
            if hop is None and status >= 500 and request.decision is not None:
                # Envoy answered before reaching any model server (an injected fault,
                # no healthy host): the chain's first cluster takes the failure.
                runtime.record_unreached(request.decision.cluster, status)
        rung = _serving_rung(request.decision, hop)
        if request.failover_call is not None:
            self.outcome = rung
        served = self._served_cluster(request, hop)
        self._notes.answer(status, rung, served)
        if request.decision is None or served is None or request.body is None:
            return codec.mark_response(rung)
        streaming = wants_stream(request.body, request.endpoint)
        if status != 200 or streaming:
            request.answer_key = None
            if request.cost is not None:
                request.cost.forget_answer()
        rewrite = plan_rewrite(
            request.endpoint, served.provider, status, streaming, served.upstream_model
        )
        upstream_endpoint = Endpoint.OPENAI_CHAT if rewrite is not None else request.endpoint
        request.watch = AnswerWatch(upstream_endpoint, streaming and status < 400, rewrite)
        content_type = rewrite.content_type if rewrite is not None else None
        return codec.mark_response(rung, request.watch.body_mode, content_type)

    def _served_cluster(self, request: _Request, hop: str | None) -> ClusterSpec | None:
        """The cluster that answered: the hop Envoy names, else the one chosen."""
        if request.decision is None:
            return None
        clusters = self._runtime.active.policy.clusters
        served = clusters.get(ClusterName(hop)) if hop else None
        return served or clusters[request.decision.cluster]

    def _on_response_body(self, request: _Request, http_body: Any) -> Any:
        watch = request.watch
        if watch is None:
            return codec.continue_message_for("response_body")
        replacement = watch.chunk(http_body.body, http_body.end_of_stream)
        metadata: dict[str, Any] = {}
        if http_body.end_of_stream:
            self._notes.usage(watch)
            if watch.whole_body is not None:
                self._keep_answer(request, watch.whole_body)
                if request.cost is not None and request.body is not None:
                    request.cost.keep_answer(request.body.model, watch.whole_body)
            metadata = self._notes.log_fields()
        if replacement is None:
            return codec.observed_response_chunk(metadata)
        if watch.body_mode == "buffered":
            return codec.replace_response_body(replacement, metadata)
        return codec.replace_response_chunk(replacement, metadata)

    def _keep_answer(self, request: _Request, body: bytes) -> None:
        key, request.answer_key = request.answer_key, None
        if key is None or request.body is None:
            return
        cache = self._runtime.cache_for(_model(request.body))
        if cache is not None and request.endpoint is Endpoint.JSON_SERVICE:
            cache.put(key, CachedAnswer("", "", self._runtime.clock.now(), raw=body))
            return
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return
        text = answer_text(request.endpoint, document)
        if text is None or cache is None:
            return
        model = document.get("model") if isinstance(document.get("model"), str) else ""
        cache.put(key, CachedAnswer(text, model or "", self._runtime.clock.now()))

    def _unanswered(self, request: _Request, permit: Permit) -> CallResult | None:
        """The breaker outcome of a call that ended before its response headers."""
        elapsed = self._runtime.clock.now() - request.sent_at
        return self._runtime.no_answer(permit, elapsed)

    def _reject(self, rejection: Rejection, endpoint: Endpoint) -> Any:
        self.outcome = f"rejected:{rejection.code}"
        self._notes.rejected(rejection)
        return codec.reject(rejection, endpoint.family)


def _serving_rung(decision: Decision | None, hop: str | None) -> str:
    """The rung of the cluster that answered (Envoy names it), else of the chosen one."""
    if decision is None:
        return "primary"
    served = ClusterName(hop) if hop is not None else None
    if served is None or served not in decision.chain_rest:
        return decision.rung
    depth = decision.fallback_depth + decision.chain_rest.index(served)
    return "primary" if depth == 0 else "fallback"


def _model(body: RequestBody) -> ModelName:
    return ModelName(body.model)


def _misconfigured_body_mode() -> Rejection:
    return Rejection(
        500,
        "server_error",
        "sidecar_misconfigured",
        "The routing sidecar received the request body in parts; "
        "Envoy's ext_proc request_body_mode must be BUFFERED.",
    )
