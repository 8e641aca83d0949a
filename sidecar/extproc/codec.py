"""Conversions between Envoy's ext_proc messages and the sidecar's values.

Reading: request headers into a :class:`RequestHead`, dynamic metadata into verified
token claims. Writing: the ``ProcessingResponse`` for each outcome (continue, pass
through, reject, route).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format

from sidecar.domain.api import ApiFamily
from sidecar.domain.outcome import Decision, Rejection
from sidecar.domain.policy import JwtSource
from sidecar.providers.errors import render_error

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_SKIP_BODY = processing_mode_pb2.ProcessingMode.NONE
_BUFFER_BODY = processing_mode_pb2.ProcessingMode.BUFFERED
RUNG_HEADER = "x-ai-sidecar-rung"


@dataclass(frozen=True, slots=True)
class RequestHead:
    """The parts of the request headers the sidecar reads."""

    method: str
    path: str
    content_length: int | None
    headers: Mapping[str, str]


def read_head(http_headers: Any) -> RequestHead:
    """Decode ext_proc ``HttpHeaders`` (Envoy sends values as ``raw_value`` bytes)."""
    headers: dict[str, str] = {}
    for header in http_headers.headers.headers:
        value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        headers[header.key] = value
    return RequestHead(
        method=headers.get(":method", ""),
        path=headers.get(":path", ""),
        content_length=_parse_length(headers.get("content-length")),
        headers=headers,
    )


def read_verified_claims(metadata_context: Any, source: JwtSource | None) -> dict[str, Any] | None:
    """The payload of a token Envoy's jwt_authn filter verified, if one was forwarded."""
    if source is None:
        return None
    namespace = metadata_context.filter_metadata.get(source.metadata_namespace)
    if namespace is None or source.payload_key not in namespace.fields:
        return None
    payload = namespace.fields[source.payload_key]
    if payload.WhichOneof("kind") != "struct_value":
        return None
    claims: dict[str, Any] = json_format.MessageToDict(payload.struct_value)
    return claims


def read_token_failure(metadata_context: Any, source: JwtSource | None) -> str | None:
    """Why Envoy's jwt_authn filter did not accept a token, if it says so."""
    if source is None:
        return None
    namespace = metadata_context.filter_metadata.get(source.metadata_namespace)
    if namespace is None or source.failure_key not in namespace.fields:
        return None
    failure = namespace.fields[source.failure_key].struct_value.fields
    message = failure["message"].string_value if "message" in failure else ""
    return message or "the token was not verified"


def continue_request_headers() -> Any:
    """Let the request headers through unchanged; the body comes next."""
    return ext_proc.ProcessingResponse(request_headers=ext_proc.HeadersResponse())


def pass_through() -> Any:
    """Let a non-AI request through untouched, and ask Envoy not to send its body."""
    return ext_proc.ProcessingResponse(
        request_headers=ext_proc.HeadersResponse(),
        mode_override=processing_mode_pb2.ProcessingMode(request_body_mode=_SKIP_BODY),
    )


def reject(rejection: Rejection, family: ApiFamily) -> Any:
    """Answer the client directly with ``rejection`` in ``family``'s error shape."""
    headers = [_header("content-type", "application/json")]
    if rejection.retry_after_s is not None:
        headers.append(_header("retry-after", str(rejection.retry_after_s)))
    return ext_proc.ProcessingResponse(
        immediate_response=ext_proc.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=rejection.status),
            headers=ext_proc.HeaderMutation(set_headers=headers),
            body=render_error(rejection, family),
            details=f"ai_sidecar_{rejection.code}",
        )
    )


def answer(status: int, body: bytes, content_type: str, rung: str) -> Any:
    """Answer the client directly with a body the sidecar wrote (cached or degraded)."""
    headers = [_header("content-type", content_type), _header(RUNG_HEADER, rung)]
    return ext_proc.ProcessingResponse(
        immediate_response=ext_proc.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=ext_proc.HeaderMutation(set_headers=headers),
            body=body,
            details=f"ai_sidecar_{rung}",
        )
    )


def read_status(http_headers: Any) -> int:
    """The ``:status`` of response headers (0 if absent or not a number)."""
    for header in http_headers.headers.headers:
        if header.key == ":status":
            value = header.raw_value.decode() if header.raw_value else header.value
            return int(value) if value.isdigit() else 0
    return 0


def mark_response(rung: str, buffer_body: bool) -> Any:
    """Tell the client which rung answered; ask for the body when it is to be kept."""
    response = ext_proc.ProcessingResponse(
        response_headers=ext_proc.HeadersResponse(
            response=ext_proc.CommonResponse(
                header_mutation=ext_proc.HeaderMutation(set_headers=[_header(RUNG_HEADER, rung)])
            )
        )
    )
    if buffer_body:
        response.mode_override.response_body_mode = _BUFFER_BODY
    return response


CLIENT_IDENTITY_HEADERS = (
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "openai-organization",
    "openai-project",
    "cookie",
)
"""Headers that carry a client's identity or pick what a provider bills; never sent upstream."""


def route_request_body(
    decision: Decision, body: bytes, cluster_header: str, client_key_header: str
) -> Any:
    """Send the request to ``decision.cluster`` with ``body`` and the cluster's credential.

    Sets the routing header and asks Envoy to clear its route cache so the route is
    chosen again. Every header that carries the client's identity (its key header,
    cookies, provider organization and project headers) is removed; when the cluster
    has a credential, ``authorization`` carries it instead.
    """
    set_headers = [
        _header(cluster_header, decision.cluster),
        _header("content-length", str(len(body))),
        _header("content-type", "application/json"),
    ]
    removed = dict.fromkeys((client_key_header, *CLIENT_IDENTITY_HEADERS))
    if decision.credential is not None:
        set_headers.append(_header("authorization", f"Bearer {decision.credential.reveal()}"))
        removed.pop("authorization", None)
    mutation = ext_proc.HeaderMutation(set_headers=set_headers, remove_headers=list(removed))
    return ext_proc.ProcessingResponse(
        request_body=ext_proc.BodyResponse(
            response=ext_proc.CommonResponse(
                header_mutation=mutation,
                body_mutation=ext_proc.BodyMutation(body=body),
                clear_route_cache=True,
            )
        )
    )


def continue_message(request: Any) -> Any:
    """The empty answer that lets a phase the sidecar does not act on continue."""
    phase = request.WhichOneof("request")
    if phase in ("request_headers", "response_headers"):
        return ext_proc.ProcessingResponse(**{phase: ext_proc.HeadersResponse()})
    if phase in ("request_body", "response_body"):
        return ext_proc.ProcessingResponse(**{phase: ext_proc.BodyResponse()})
    return ext_proc.ProcessingResponse(**{phase: ext_proc.TrailersResponse()})


def _header(key: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode("utf-8")),
        append_action=_OVERWRITE,
    )


def _parse_length(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)
