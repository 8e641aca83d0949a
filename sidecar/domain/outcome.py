"""What routing a request can come to: a :class:`Decision` or a :class:`Rejection`."""

from dataclasses import dataclass

from sidecar.domain.ids import ClusterName, ModelName, TenantId, TierName
from sidecar.domain.secret import Secret


@dataclass(frozen=True, slots=True)
class Decision:
    """Send the request to ``cluster``, asking it for ``upstream_model``.

    ``credential`` replaces whatever credential the client sent (None: send none).
    ``reason`` says in a few words why this cluster was chosen; ``fallback_depth`` is
    its place in the chain (0 for the primary); ``skipped`` lists the clusters before
    it that were out, with the reason.

    ``chain_rest`` is ``cluster`` and the clusters after it in the chain, in order;
    the first ``hops`` of them may be tried for this request, one after the other, if
    the ones before fail (failover inside Envoy). ``hops`` 1: ``cluster`` only.
    """

    tenant: TenantId
    tier: TierName
    requested_model: ModelName
    cluster: ClusterName
    upstream_model: str
    credential: Secret | None
    reason: str
    fallback_depth: int = 0
    skipped: tuple[tuple[ClusterName, str], ...] = ()
    chain_rest: tuple[ClusterName, ...] = ()
    hops: int = 1
    variant: str | None = None
    """``canary`` or ``baseline`` on a route with a canary; None elsewhere."""
    objective_met: bool | None = None
    """On an objective-routed model: whether the chosen cluster met the bar."""

    @property
    def failover_hops(self) -> tuple[ClusterName, ...]:
        """The clusters this request may be tried on, in order (``cluster`` first)."""
        return self.chain_rest[: self.hops] or (self.cluster,)

    @property
    def rung(self) -> str:
        """Which rung of the degradation ladder serves: ``primary`` or ``fallback``."""
        return "primary" if self.fallback_depth == 0 else "fallback"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Answer the client directly with an error instead of routing.

    ``code`` is a stable machine-readable word (for example ``model_not_found``);
    ``error_type`` is the OpenAI error category; ``message`` is for people and never
    contains credentials.
    """

    status: int
    error_type: str
    code: str
    message: str
    retry_after_s: int | None = None


def missing_credentials() -> Rejection:
    """No API key or verified token came with the request."""
    return Rejection(
        401,
        "authentication_error",
        "missing_api_key",
        "No API key provided. Send it as 'Authorization: Bearer <key>'.",
    )


def unknown_api_key() -> Rejection:
    """An API key came with the request but no tenant holds it."""
    return Rejection(401, "authentication_error", "invalid_api_key", "Incorrect API key provided.")


def invalid_token(reason: str) -> Rejection:
    """A bearer token that is a JWT was presented, and Envoy did not accept it."""
    return Rejection(
        401,
        "authentication_error",
        "invalid_token",
        f"The bearer token was not accepted: {reason}.",
    )


def unknown_token_tenant(claim: str) -> Rejection:
    """A verified token names a tenant the policy does not know."""
    return Rejection(
        401,
        "authentication_error",
        "unknown_tenant",
        f"The verified token's '{claim}' claim does not name a known tenant.",
    )


def unknown_model(model: str) -> Rejection:
    """The requested model is not a virtual model of the policy."""
    return Rejection(
        404,
        "invalid_request_error",
        "model_not_found",
        f"The model '{model}' does not exist.",
    )


def model_not_in_tier(model: ModelName, tier: TierName) -> Rejection:
    """The model exists but the tenant's tier has no route to it."""
    return Rejection(
        403,
        "permission_error",
        "model_not_allowed",
        f"The model '{model}' is not available on the '{tier}' tier.",
    )


def endpoint_not_served(model: ModelName, path: str) -> Rejection:
    """The cluster serving this model does not speak the API the client called."""
    return Rejection(
        400,
        "invalid_request_error",
        "unsupported_endpoint",
        f"The model '{model}' cannot be used with {path} for this tenant.",
    )


def malformed_body(detail: str) -> Rejection:
    """The body is not the JSON object the endpoint expects."""
    return Rejection(400, "invalid_request_error", "invalid_body", detail)


def body_too_large(limit_bytes: int) -> Rejection:
    """The body is larger than the policy allows."""
    return Rejection(
        413,
        "invalid_request_error",
        "request_too_large",
        f"The request body is larger than the limit of {limit_bytes} bytes.",
    )


def unknown_endpoint(path: str) -> Rejection:
    """A service path no virtual model of the policy is bound to."""
    return Rejection(
        404,
        "invalid_request_error",
        "unknown_endpoint",
        f"No service is served at {path}.",
    )


def method_not_allowed(method: str, path: str) -> Rejection:
    """AI endpoints take POST only."""
    return Rejection(
        405,
        "invalid_request_error",
        "method_not_allowed",
        f"{method} is not allowed on {path}; use POST.",
    )


def shed(status: int, reason: str, retry_after_s: int) -> Rejection:
    """A full pool turned the request away; 429 when the tenant's own share is used up."""
    code = "too_many_requests" if status == 429 else "overloaded"
    error_type = "rate_limit_error" if status == 429 else "server_error"
    return Rejection(
        status,
        error_type,
        code,
        f"The service is at capacity ({reason}); retry after {retry_after_s}s.",
        retry_after_s,
    )


def no_cluster_available(model: ModelName, retry_after_s: int) -> Rejection:
    """Every cluster of the chain is out and nothing further down the ladder could answer."""
    return Rejection(
        503,
        "server_error",
        "model_unavailable",
        f"No upstream for the model '{model}' is available right now; "
        f"retry after {retry_after_s}s.",
        retry_after_s,
    )


def degraded_queue_full(model: ModelName) -> Rejection:
    """The queue for parked requests is full."""
    return Rejection(
        503,
        "server_error",
        "queue_full",
        f"The model '{model}' is unavailable and its request queue is full.",
        30,
    )


def budget_exhausted(
    budget: str, whose: str, used: str, window: str, resets_at: str, retry_after_s: int
) -> Rejection:
    """A budget the request counts against is spent, and its policy says refuse.

    ``whose`` names the count ("tenant 'acme'", "team 'data'", "job 'nightly' of tenant
    'acme'"); ``used`` says how much of what ("1000 of 1000 tokens").
    """
    return Rejection(
        429,
        "insufficient_quota",
        "budget_exceeded",
        f"The {window} budget '{budget}' of {whose} is spent ({used}); it resets at {resets_at}.",
        retry_after_s,
    )


def budget_too_small(
    budget: str,
    whose: str,
    window: str,
    left: str,
    asked: str,
    resets_at: str,
    retry_after_s: int,
) -> Rejection:
    """A budget has some left, but less than the request may use (its estimate)."""
    return Rejection(
        429,
        "insufficient_quota",
        "budget_exceeded",
        f"The {window} budget '{budget}' of {whose} has {left} left, and this request "
        f"may use up to {asked} (prompt estimate plus max_tokens); lower max_tokens, or "
        f"wait until it resets at {resets_at}.",
        retry_after_s,
    )


def rate_limited(what: str, retry_after_s: int) -> Rejection:
    """The tenant is over a requests or tokens per minute limit; ``what`` says which."""
    return Rejection(
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
        f"Rate limit reached: {what}; retry after {retry_after_s}s.",
        retry_after_s,
    )


def over_rate_limit_capacity(estimate: int, limit: int) -> Rejection:
    """One request's token estimate is larger than the tenant's whole per-minute limit."""
    return Rejection(
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
        f"This request may use up to {estimate} tokens (prompt estimate plus max_tokens), "
        f"more than the limit of {limit} tokens per minute; lower max_tokens or shorten "
        "the prompt.",
    )


def invalid_job_id(header: str) -> Rejection:
    """The job header holds something that cannot be a job id."""
    return Rejection(
        400,
        "invalid_request_error",
        "invalid_job_id",
        f"The '{header}' header must be a job id of 1 to 128 letters, digits, "
        "'_', '.', ':' or '-'.",
    )


def no_capable_cluster(model: ModelName, why: str) -> Rejection:
    """Objective routing found no cluster of the route that can take the request at all."""
    return Rejection(
        400,
        "invalid_request_error",
        "unsupported_request",
        f"No cluster serving the model '{model}' can take this request: {why}.",
    )
