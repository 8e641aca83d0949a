"""Failover attempts over real gRPC, as Envoy drives them, without Envoy.

A client request's downstream stream hands a plan to Envoy; each upstream attempt
(``x-ext-proc-role: upstream``) names its hop through the endpoint metadata attribute,
gets its body rewritten for that hop and feeds that hop's breaker.
"""

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from google.protobuf import json_format, struct_pb2

from sidecar.core.clock import FakeClock
from sidecar.core.router import ActivePolicy
from sidecar.domain.ids import ClusterName
from sidecar.engine.runtime import RoutingRuntime
from sidecar.extproc.grpc_server import GrpcServer
from sidecar.extproc.server import ExternalProcessorService, StreamRegistry
from tests.extproc.test_stream import body, chat, error_of, headers
from tests.waiting import wait_until

UPSTREAM = (("x-ext-proc-role", "upstream"),)
ATTRIBUTES = "envoy.filters.http.ext_proc"


@dataclass
class Sidecar:
    runtime: RoutingRuntime
    streams: StreamRegistry
    attempts: StreamRegistry
    stub: Any

    def window(self, cluster: str) -> tuple[int, float, int]:
        state = self.runtime.snapshot()["clusters"][cluster]
        return state["window_calls"], state["failure_rate"], state["in_flight"]


@pytest.fixture
async def sidecar(demo_active: ActivePolicy) -> AsyncIterator[Sidecar]:
    address = f"unix-abstract:ai-sidecar-test-{uuid.uuid4().hex}"
    streams, attempts = StreamRegistry(), StreamRegistry()
    runtime = RoutingRuntime(demo_active, FakeClock())
    service = ExternalProcessorService(lambda: runtime, streams, attempts)
    server = GrpcServer(service, address, 1 << 20)
    await server.start()
    async with grpc.aio.insecure_channel(address) as channel:
        yield Sidecar(runtime, streams, attempts, ext_proc_grpc.ExternalProcessorStub(channel))
    await server.stop(0)


def host_metadata(hop: str) -> str:
    """The attribute as Envoy sends it: a text-format envoy.config.core.v3.Metadata."""
    return (
        'filter_metadata { key: "ai.sidecar" value { fields { key: "hop" '
        f'value {{ string_value: "{hop}" }} }} }} }}'
    )


def with_hop(request: Any, metadata_text: str | None) -> Any:
    if metadata_text is not None:
        attributes = struct_pb2.Struct()
        attributes.update({"xds.upstream_host_metadata": metadata_text})
        request.attributes[ATTRIBUTES].CopyFrom(attributes)
    return request


def attempt_headers(hop: str | None, plan: dict[str, Any] | None) -> Any:
    """An upstream attempt's request headers, after the downstream phase rewrote them."""
    request = headers(
        key="sk-upstream-openai-demo",
        extra={"x-ai-sidecar-cluster": "chain--openai-premium--openai-cheap--ollama-local"},
    )
    if plan is not None:
        metadata = struct_pb2.Struct()
        metadata.update(plan)
        request.metadata_context.filter_metadata["ai.sidecar"].CopyFrom(metadata)
    return with_hop(request, host_metadata(hop) if hop is not None else None)


def response_headers(status: int) -> Any:
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=":status", raw_value=str(status).encode())]
    )
    return ext_proc.ProcessingRequest(response_headers=ext_proc.HttpHeaders(headers=header_map))


class Stream:
    """One open ext_proc stream, written and read message by message."""

    def __init__(self, call: Any) -> None:
        self.call = call

    async def send(self, request: Any) -> Any:
        await self.call.write(request)
        return await self.call.read()

    async def end(self) -> None:
        await self.call.done_writing()
        assert await self.call.read() == grpc.aio.EOF


async def route_paid_chat(sidecar: Sidecar) -> tuple[Stream, dict[str, Any]]:
    """A paid chat request through the downstream phase; its stream and plan."""
    client = Stream(sidecar.stub.Process())
    await client.send(headers())
    routed = await client.send(body(chat()))
    plan = json_format.MessageToDict(routed.dynamic_metadata)["ai.sidecar"]
    return client, plan


def mutation(answer: Any) -> tuple[dict[str, str], list[str], bytes]:
    common = answer.request_body.response
    set_headers = {
        h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers
    }
    return set_headers, list(common.header_mutation.remove_headers), common.body_mutation.body


async def test_each_attempt_is_rewritten_for_its_hop_and_feeds_its_breaker(
    sidecar: Sidecar,
) -> None:
    client, plan = await route_paid_chat(sidecar)

    premium = Stream(sidecar.stub.Process(metadata=UPSTREAM))
    assert (await premium.send(attempt_headers("openai-premium", plan))).HasField("request_headers")
    set_headers, _, rewritten = mutation(await premium.send(body(chat())))
    assert json.loads(rewritten)["model"] == "gpt-4o"
    assert sidecar.window("openai-premium")[2] == 1, "the attempt is in flight"
    await premium.send(response_headers(503))
    await premium.end()
    assert sidecar.window("openai-premium") == (1, 1.0, 0)

    cheap = Stream(sidecar.stub.Process(metadata=UPSTREAM))
    await cheap.send(attempt_headers("openai-cheap", plan))
    set_headers, removed, rewritten = mutation(await cheap.send(body(chat())))
    assert json.loads(rewritten) == {**chat(), "model": "gpt-4o-mini"}
    assert set_headers == {
        "content-length": str(len(rewritten)),
        ":path": "/v1/chat/completions",
        "authorization": "Bearer sk-upstream-openai-demo",
    }
    assert "x-ai-sidecar-cluster" in removed
    assert "authorization" not in removed
    await cheap.send(response_headers(200))
    await cheap.end()
    assert sidecar.window("openai-cheap") == (1, 0.0, 0)

    answer = await client.send(with_hop(response_headers(200), host_metadata("openai-cheap")))
    rung = answer.response_headers.response.header_mutation.set_headers[0].header
    assert (rung.key, rung.raw_value) == ("x-ai-sidecar-rung", b"fallback")
    await client.end()
    assert sidecar.streams.finished == 1
    assert sidecar.attempts.finished == 2
    assert sidecar.runtime.snapshot()["failover_calls"] == 0


async def test_a_hop_without_credential_gets_the_authorization_removed(
    sidecar: Sidecar,
) -> None:
    _, plan = await route_paid_chat(sidecar)
    local = Stream(sidecar.stub.Process(metadata=UPSTREAM))
    await local.send(attempt_headers("ollama-local", plan))
    set_headers, removed, rewritten = mutation(await local.send(body(chat())))
    assert json.loads(rewritten)["model"] == "llama3.2"
    assert "authorization" not in set_headers
    assert "authorization" in removed


async def test_an_attempt_ending_without_headers_fails_its_hop_once_the_request_is_answered(
    sidecar: Sidecar,
) -> None:
    client, plan = await route_paid_chat(sidecar)
    reset = Stream(sidecar.stub.Process(metadata=UPSTREAM))
    await reset.send(attempt_headers("openai-premium", plan))
    await reset.send(body(chat()))
    await reset.end()  # Envoy ends the stream: the connection was reset
    await wait_until(lambda: sidecar.attempts.finished == 1)
    assert sidecar.window("openai-premium") == (0, 0.0, 1), "not judged yet"

    await client.send(with_hop(response_headers(200), host_metadata("openai-cheap")))
    assert sidecar.window("openai-premium") == (1, 1.0, 0)
    await client.end()


async def test_an_attempt_cut_short_by_the_client_leaving_is_not_a_failure(
    sidecar: Sidecar,
) -> None:
    client, plan = await route_paid_chat(sidecar)
    attempt = Stream(sidecar.stub.Process(metadata=UPSTREAM))
    await attempt.send(attempt_headers("openai-premium", plan))
    await attempt.send(body(chat()))
    client.call.cancel()
    await attempt.end()
    await wait_until(lambda: sidecar.attempts.finished == 1 and sidecar.streams.active == 0)
    assert sidecar.window("openai-premium") == (0, 0.0, 0)
    assert sidecar.runtime.snapshot()["failover_calls"] == 0


GOOD_PLAN = {
    "call": "c" * 32,
    "hops": ["openai-premium", "openai-cheap", "ollama-local"],
    "path": "/v1/chat/completions",
}


@pytest.mark.parametrize(
    ("request_", "status", "code"),
    [
        (attempt_headers("enterprise-dedicated", GOOD_PLAN), 502, "failover_hop_refused"),
        (attempt_headers("no-such-cluster", GOOD_PLAN), 502, "failover_hop_refused"),
        (attempt_headers("openai-cheap", None), 503, "failover_misconfigured"),
        (attempt_headers(None, GOOD_PLAN), 503, "failover_misconfigured"),
        (
            with_hop(attempt_headers(None, GOOD_PLAN), "filter_metadata { garbage"),
            503,
            "failover_misconfigured",
        ),
    ],
    ids=["hop outside the plan", "hop the policy lacks", "no plan", "no hop", "unreadable hop"],
)
async def test_an_attempt_the_sidecar_cannot_place_is_refused_not_sent(
    sidecar: Sidecar, request_: Any, status: int, code: str
) -> None:
    attempt = Stream(sidecar.stub.Process(metadata=UPSTREAM))
    answer = await attempt.send(request_)
    got_status, error = error_of(answer)
    assert (got_status, error["error"]["code"]) == (status, code)
    assert answer.immediate_response.details == f"ai_sidecar_{code}"
    assert all(sidecar.window(c)[0] == 0 for c in ("openai-premium", "enterprise-dedicated"))


def test_an_attempt_ending_after_the_answer_fails_at_once_and_after_the_end_is_dropped(
    demo_active: ActivePolicy,
) -> None:
    runtime = RoutingRuntime(demo_active, FakeClock())
    premium = ClusterName("openai-premium")

    def window() -> tuple[int, float, int]:
        state = runtime.snapshot()["clusters"][premium]
        return state["window_calls"], state["failure_rate"], state["in_flight"]

    answered = runtime.open_failover(None)
    permit = runtime.start_attempt(premium)
    assert permit is not None
    runtime.failover_answered(answered)
    runtime.attempt_unanswered(answered, permit, 0.5)
    assert window() == (1, 1.0, 0), "the request went on without it: it failed"

    ended = runtime.open_failover(None)
    permit = runtime.start_attempt(premium)
    assert permit is not None
    runtime.close_failover(ended)
    runtime.attempt_unanswered(ended, permit, 0.5)
    assert window() == (1, 1.0, 0), "the client left: no outcome"
    runtime.close_failover(answered)
    assert runtime.snapshot()["failover_calls"] == 0


def test_the_first_hops_permit_is_reserved_at_routing_and_claimed_once(
    demo_active: ActivePolicy,
) -> None:
    runtime = RoutingRuntime(demo_active, FakeClock())
    premium, cheap = ClusterName("openai-premium"), ClusterName("openai-cheap")
    reserved = runtime.start_attempt(premium)
    call = runtime.open_failover(reserved)
    assert runtime.claim_reserved(call, cheap) is None, "only the first hop's attempt claims it"
    assert runtime.claim_reserved(call, premium) is reserved
    assert runtime.claim_reserved(call, premium) is None, "once"


def test_an_unclaimed_reservation_fails_when_another_hop_answers(
    demo_active: ActivePolicy,
) -> None:
    runtime = RoutingRuntime(demo_active, FakeClock())
    premium = ClusterName("openai-premium")
    call = runtime.open_failover(runtime.start_attempt(premium))
    runtime.failover_answered(call)  # Envoy could not connect to premium; cheap answered
    state = runtime.snapshot()["clusters"][premium]
    assert (state["window_calls"], state["failure_rate"], state["in_flight"]) == (1, 1.0, 0)
    runtime.close_failover(call)
    assert runtime.snapshot()["clusters"][premium]["window_calls"] == 1, "counted once"
