"""Conversions between Envoy's ext_proc messages and the sidecar's values.

Reading: request headers into a :class:`RequestHead`, dynamic metadata into verified
token claims. Writing: the ``ProcessingResponse`` for each outcome (continue, pass
through, reject, route).
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format, text_format

from sidecar.domain.api import ApiFamily
from sidecar.domain.outcome import Decision, Rejection
from sidecar.domain.policy import JwtSource
from sidecar.domain.secret import Secret
from sidecar.providers.errors import render_error

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_SKIP_BODY = processing_mode_pb2.ProcessingMode.NONE
_BUFFER_BODY = processing_mode_pb2.ProcessingMode.BUFFERED
_STREAM_BODY = processing_mode_pb2.ProcessingMode.STREAMED
RUNG_HEADER = "x-ai-sidecar-rung"
COST_CACHE_HEADER = "x-ai-sidecar-cache"
"""Set to ``hit`` on an answer the cost cache served instead of a model."""
MAX_RETRIES_HEADER = "x-envoy-max-retries"
SIDECAR_NAMESPACE = "ai.sidecar"
"""Envoy metadata namespace of the sidecar: the failover plan in dynamic metadata, and
the hop name in each model cluster endpoint's metadata (key ``hop``)."""
HOST_METADATA_ATTRIBUTE = "xds.upstream_host_metadata"
_ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"


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


@dataclass(frozen=True, slots=True)
class FailoverPlan:
    """What the request phase tells every upstream attempt of a request, via Envoy.

    ``call`` identifies the request inside the sidecar (random, never client-chosen);
    ``hops`` are the clusters the request may be sent to, in order.
    """

    call: str
    hops: tuple[str, ...]
    path: str = ""
    """The path the client called (later attempts may see a rewritten ``:path``)."""


def read_failover_plan(metadata_context: Any) -> FailoverPlan | None:
    """The plan the request phase stored in Envoy's dynamic metadata, if it arrived."""
    namespace = metadata_context.filter_metadata.get(SIDECAR_NAMESPACE)
    if namespace is None or "call" not in namespace.fields or "hops" not in namespace.fields:
        return None
    call = namespace.fields["call"].string_value
    hops = tuple(value.string_value for value in namespace.fields["hops"].list_value.values)
    if not call or not hops or not all(hops):
        return None
    path = namespace.fields["path"].string_value if "path" in namespace.fields else ""
    return FailoverPlan(call, hops, path)


def read_hop(message: Any) -> str | None:
    """The hop (model cluster) of the upstream host Envoy picked, from its endpoint metadata.

    Envoy sends the attribute ``xds.upstream_host_metadata`` as a text-format
    ``envoy.config.core.v3.Metadata``; the endpoint names its cluster under
    ``filter_metadata["ai.sidecar"]["hop"]``. None when absent or unreadable.
    """
    attributes = message.attributes.get(_ATTRIBUTES_KEY)
    if attributes is None or HOST_METADATA_ATTRIBUTE not in attributes.fields:
        return None
    text = attributes.fields[HOST_METADATA_ATTRIBUTE].string_value
    quick = _HOP_IN_TEXT.search(text)
    if quick is not None:
        return quick.group(1)
    return _parse_hop(text)


_HOP_IN_TEXT = re.compile(
    r'key: "ai\.sidecar"\s*value \{\s*fields \{\s*key: "hop"\s*value \{\s*'
    r'string_value: "([A-Za-z0-9][A-Za-z0-9_.-]*)"'
)
"""The usual shape of the hop in Envoy's text: read without the text-format parser,
which costs more than the rest of the response phase (cluster names need no escapes)."""


def _parse_hop(text: str) -> str | None:
    metadata = base_pb2.Metadata()
    try:
        text_format.Parse(text, metadata)
    except text_format.ParseError:
        return None
    namespace = metadata.filter_metadata.get(SIDECAR_NAMESPACE)
    if namespace is None or "hop" not in namespace.fields:
        return None
    return namespace.fields["hop"].string_value or None


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
    if rejection.code == "method_not_allowed":
        headers.append(_header("allow", "POST"))
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


def answer(
    status: int,
    body: bytes,
    content_type: str,
    rung: str,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> Any:
    """Answer the client directly with a body the sidecar wrote (cached or degraded)."""
    headers = [_header("content-type", content_type), _header(RUNG_HEADER, rung)]
    headers += [_header(name, value) for name, value in extra_headers]
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


def mark_response(
    rung: str,
    body_mode: str | None = None,
    content_type: str | None = None,
) -> Any:
    """Tell the client which rung answered; ask for the body when the sidecar needs it.

    ``body_mode`` is ``buffered`` (the whole body at once: to keep or translate it),
    ``streamed`` (chunk by chunk: to translate a stream) or None (the body is not the
    sidecar's business). With a new ``content_type`` the body will change, so
    ``content-length`` is dropped (set again with a buffered body).
    """
    set_headers = [_header(RUNG_HEADER, rung)]
    removed: list[str] = []
    if content_type is not None:
        set_headers.append(_header("content-type", content_type))
        removed.append("content-length")
    response = ext_proc.ProcessingResponse(
        response_headers=ext_proc.HeadersResponse(
            response=ext_proc.CommonResponse(
                header_mutation=ext_proc.HeaderMutation(
                    set_headers=set_headers, remove_headers=removed
                )
            )
        )
    )
    if body_mode == "buffered":
        response.mode_override.response_body_mode = _BUFFER_BODY
    elif body_mode == "streamed":
        response.mode_override.response_body_mode = _STREAM_BODY
    return response


def replace_response_body(body: bytes, log_fields: Mapping[str, Any] | None = None) -> Any:
    """Replace a buffered response body (and its length)."""
    response = ext_proc.ProcessingResponse(
        response_body=ext_proc.BodyResponse(
            response=ext_proc.CommonResponse(
                header_mutation=ext_proc.HeaderMutation(
                    set_headers=[_header("content-length", str(len(body)))]
                ),
                body_mutation=ext_proc.BodyMutation(body=body),
            )
        )
    )
    _add_log_fields(response, log_fields)
    return response


def replace_response_chunk(chunk: bytes, log_fields: Mapping[str, Any] | None = None) -> Any:
    """Replace one chunk of a streamed response body (an empty one sends nothing)."""
    mutation = (
        ext_proc.BodyMutation(body=chunk) if chunk else ext_proc.BodyMutation(clear_body=True)
    )
    response = ext_proc.ProcessingResponse(
        response_body=ext_proc.BodyResponse(
            response=ext_proc.CommonResponse(body_mutation=mutation)
        )
    )
    _add_log_fields(response, log_fields)
    return response


def observed_response_chunk(log_fields: Mapping[str, Any] | None = None) -> Any:
    """Let a response chunk through unchanged (the sidecar only read it)."""
    response = ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse())
    _add_log_fields(response, log_fields)
    return response


def _add_log_fields(response: Any, log_fields: Mapping[str, Any] | None) -> None:
    """Hand decision fields to Envoy's access log as dynamic metadata ``ai.sidecar``.

    Strings, numbers and booleans are written into the Struct's fields directly
    (``Struct.update`` converts every value through Python code, several times slower);
    anything else (the failover plan's list of hops) goes through ``update``.
    """
    if not log_fields:
        return
    fields = response.dynamic_metadata.fields[SIDECAR_NAMESPACE].struct_value.fields
    for name, value in log_fields.items():
        if isinstance(value, str):
            fields[name].string_value = value
        elif isinstance(value, bool):
            fields[name].bool_value = value
        elif isinstance(value, int | float):
            fields[name].number_value = value
        else:
            response.dynamic_metadata.fields[SIDECAR_NAMESPACE].struct_value.update({name: value})


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
    decision: Decision,
    body: bytes,
    cluster_header: str,
    client_key_header: str,
    target: str | None = None,
    plan: FailoverPlan | None = None,
    path: str | None = None,
    trace_headers: Mapping[str, str] | None = None,
    log_fields: Mapping[str, Any] | None = None,
) -> Any:
    """Send the request to ``target`` with ``body`` and ``decision.cluster``'s credential.

    ``target`` is ``decision.cluster``, or the aggregate cluster of the request's
    failover chain; ``x-envoy-max-retries`` allows one retry per further hop of
    ``plan`` (none without a plan), and the plan goes into Envoy's dynamic metadata for
    the upstream filter that rewrites every attempt. Sets the routing header and asks
    Envoy to clear its route cache so the route is chosen again. Every header that
    carries the client's identity (its key header, cookies, provider organization and
    project headers) is removed; when the cluster has a credential, ``authorization``
    carries it instead.
    """
    retries = len(plan.hops) - 1 if plan is not None else 0
    set_headers = [
        _header(cluster_header, target or decision.cluster),
        _header(MAX_RETRIES_HEADER, str(retries)),
        _header("content-length", str(len(body))),
        _header("content-type", "application/json"),
    ]
    set_headers += _credential_headers(decision.credential)
    if path is not None:
        set_headers.append(_header(":path", path))
    set_headers += [_header(name, value) for name, value in (trace_headers or {}).items()]
    mutation = ext_proc.HeaderMutation(
        set_headers=set_headers,
        remove_headers=_identity_headers(client_key_header, decision.credential),
    )
    response = ext_proc.ProcessingResponse(
        request_body=ext_proc.BodyResponse(
            response=ext_proc.CommonResponse(
                header_mutation=mutation,
                body_mutation=ext_proc.BodyMutation(body=body),
                clear_route_cache=True,
            )
        )
    )
    fields: dict[str, Any] = dict(log_fields or {})
    if plan is not None:
        fields.update({"call": plan.call, "hops": list(plan.hops), "path": plan.path})
    _add_log_fields(response, fields)
    return response


def hop_request_body(
    body: bytes,
    credential: Secret | None,
    cluster_header: str,
    client_key_header: str,
    path: str,
) -> Any:
    """One upstream attempt's request: ``body`` and the hop's credential (or none).

    Header changes made for an earlier attempt are still there, so ``:path``,
    ``authorization`` and ``content-length`` are always set or removed, never left as
    they were; the routing header stays inside the gateway.
    """
    set_headers = [
        _header("content-length", str(len(body))),
        _header(":path", path),
        *_credential_headers(credential),
    ]
    removed = [cluster_header, *_identity_headers(client_key_header, credential)]
    return ext_proc.ProcessingResponse(
        request_body=ext_proc.BodyResponse(
            response=ext_proc.CommonResponse(
                header_mutation=ext_proc.HeaderMutation(
                    set_headers=set_headers, remove_headers=list(dict.fromkeys(removed))
                ),
                body_mutation=ext_proc.BodyMutation(body=body),
            )
        )
    )


def _credential_headers(credential: Secret | None) -> list[Any]:
    if credential is None:
        return []
    return [_header("authorization", f"Bearer {credential.reveal()}")]


def _identity_headers(client_key_header: str, credential: Secret | None) -> list[str]:
    removed = dict.fromkeys((client_key_header, *CLIENT_IDENTITY_HEADERS))
    if credential is not None:
        removed.pop("authorization", None)
    return list(removed)


def continue_message_for(phase: str) -> Any:
    """The empty answer that lets ``phase`` continue unchanged."""
    if phase in ("request_headers", "response_headers"):
        return ext_proc.ProcessingResponse(**{phase: ext_proc.HeadersResponse()})
    if phase in ("request_body", "response_body"):
        return ext_proc.ProcessingResponse(**{phase: ext_proc.BodyResponse()})
    return ext_proc.ProcessingResponse(**{phase: ext_proc.TrailersResponse()})


def continue_message(request: Any) -> Any:
    """The empty answer that lets a phase the sidecar does not act on continue."""
    return continue_message_for(request.WhichOneof("request"))


def _header(key: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode("utf-8")),
        append_action=_OVERWRITE,
    )


def _parse_length(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)
