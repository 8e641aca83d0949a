"""The ways a benchmark request crosses the front Envoy, and the request each one sends.

All of them go through the same Envoy process (``envoy/envoy.yaml`` as the tests run
it) to the fake upstreams of ``bench/upstream-envoy.yaml``:

- ``envoy``: a path that is not an AI path, so the ``passthrough`` route sends it
  straight upstream: no JWT check, no ext_proc, no body buffering. The baseline.
- ``sidecar``: the full routing path to a single cluster. The enterprise tenant asks
  for the ``local`` model in Ollama's own API (no translation): tenant lookup by API
  key, body parse, decision, breaker, bulkhead pool, credential and body rewrite, then
  the response headers and body (usage parsing), tracing and metrics.
- ``sidecar-chain``: the same tenant asks for ``chat`` in the OpenAI API, whose route
  is a failover chain: Envoy sends it to an aggregate cluster, and the chain's upstream
  ext_proc filter rewrites every attempt too (three more ext_proc messages).

The enterprise tier is used because its pool admits 16 requests at once (the paid
tier's ``per_tenant_max`` of 12 would shed some at concurrency 16, the free pool is 4).
"""

import json
from dataclasses import dataclass
from typing import Final

BENCH_API_KEY: Final = "sk-demo-enterprise"
"""The demo enterprise tenant's API key (``examples/policy.yaml``)."""

PROMPT_TOKENS: Final = 27
"""The prompt tokens every fake upstream answer reports (``bench/upstream-envoy.yaml``)."""

_MESSAGES: Final = [
    {"role": "system", "content": "You are a concise assistant for platform engineers."},
    {
        "role": "user",
        "content": "In two sentences: why put a circuit breaker in front of a model API?",
    },
]


@dataclass(frozen=True)
class Setup:
    """One way through the front Envoy: the request wrk sends and what it exercises."""

    name: str
    description: str
    path: str
    body: bytes
    via_sidecar: bool
    authorization: str = f"Bearer {BENCH_API_KEY}"


def _json(document: dict[str, object]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


ENVOY: Final = Setup(
    name="envoy",
    description="Envoy only: plain route `passthrough`, no ext_proc (the baseline)",
    path="/bench/plain",
    body=_json({"model": "chat", "messages": _MESSAGES, "max_tokens": 64}),
    via_sidecar=False,
)
SIDECAR: Final = Setup(
    name="sidecar",
    description=(
        "Envoy + sidecar, single cluster: enterprise tenant, model `local` "
        "-> `ollama-local`, Ollama `/api/chat`"
    ),
    path="/api/chat",
    body=_json({"model": "local", "messages": _MESSAGES, "stream": False}),
    via_sidecar=True,
)
SIDECAR_CHAIN: Final = Setup(
    name="sidecar-chain",
    description=(
        "Envoy + sidecar, failover chain: enterprise tenant, model `chat` -> "
        "`chain--enterprise-dedicated--openai-premium--ollama-local` (upstream ext_proc "
        "per attempt), OpenAI `/v1/chat/completions`"
    ),
    path="/v1/chat/completions",
    body=_json({"model": "chat", "messages": _MESSAGES, "max_tokens": 64}),
    via_sidecar=True,
)

SETUPS: Final = (ENVOY, SIDECAR, SIDECAR_CHAIN)
"""Every setup, the baseline first (ratios are against it)."""

BASELINE: Final = ENVOY.name
