"""What a request body says about its cost: its output cap and whether its answer is fixed."""

from typing import Any

import pytest

from sidecar.domain.api import Endpoint
from sidecar.providers.body import RequestBody
from sidecar.providers.request_facts import answer_is_fixed, max_output_tokens


def body(**fields: Any) -> RequestBody:
    return RequestBody({"model": "chat", **fields}, "chat")


@pytest.mark.parametrize(
    ("endpoint", "fields", "expected"),
    [
        (Endpoint.OPENAI_CHAT, {}, 1024),
        (Endpoint.OPENAI_CHAT, {"max_tokens": 50}, 50),
        (Endpoint.OPENAI_CHAT, {"max_completion_tokens": 70, "max_tokens": 50}, 70),
        (Endpoint.OPENAI_CHAT, {"max_tokens": 0}, 1024),
        (Endpoint.OPENAI_CHAT, {"max_tokens": True}, 1024),
        (Endpoint.OPENAI_CHAT, {"max_tokens": "50"}, 1024),
        (Endpoint.OPENAI_COMPLETIONS, {"max_tokens": 9}, 9),
        (Endpoint.OPENAI_EMBEDDINGS, {"max_tokens": 9}, 0),
        (Endpoint.OLLAMA_CHAT, {"options": {"num_predict": 30}}, 30),
        (Endpoint.OLLAMA_GENERATE, {"options": {"num_predict": -1}}, 1024),
        (Endpoint.OLLAMA_EMBED, {}, 0),
    ],
)
def test_max_output_tokens(endpoint: Endpoint, fields: dict[str, Any], expected: int) -> None:
    assert max_output_tokens(endpoint, body(**fields), 1024) == expected


@pytest.mark.parametrize(
    ("endpoint", "fields", "deterministic_chat", "expected"),
    [
        (Endpoint.OPENAI_EMBEDDINGS, {"input": "x"}, False, True),
        (Endpoint.OLLAMA_EMBED, {"input": "x"}, False, True),
        (Endpoint.OPENAI_CHAT, {"temperature": 0}, True, True),
        (Endpoint.OPENAI_CHAT, {"temperature": 0.0}, True, True),
        (Endpoint.OPENAI_CHAT, {"temperature": 0}, False, False),
        (Endpoint.OPENAI_CHAT, {"temperature": 0.2}, True, False),
        (Endpoint.OPENAI_CHAT, {}, True, False),
        (Endpoint.OPENAI_CHAT, {"temperature": False}, True, False),
        (Endpoint.OPENAI_CHAT, {"temperature": 0, "stream": True}, True, False),
        (Endpoint.OLLAMA_CHAT, {"options": {"temperature": 0}, "stream": False}, True, True),
        # Ollama streams unless told not to.
        (Endpoint.OLLAMA_CHAT, {"options": {"temperature": 0}}, True, False),
        (Endpoint.JSON_SERVICE, {}, True, False),
    ],
)
def test_answer_is_fixed(
    endpoint: Endpoint, fields: dict[str, Any], deterministic_chat: bool, expected: bool
) -> None:
    assert answer_is_fixed(endpoint, body(**fields), deterministic_chat) is expected
