"""What an objective-routed request needs and which task family it belongs to.

:func:`task_facts` reads the body once: the capabilities the request needs (chat or
embeddings, tools when it offers some, vision when a message carries an image), the
tokens it may take (the prompt estimate plus its output cap, for context windows), and
its task family: a trusted header when the objective names one, else the first of the
objective's rules on the body that matches (prompt length, tools), else the default.
The rules are the hook a learned classifier would replace.
"""

import re
from collections.abc import Mapping
from typing import Any

from sidecar.domain.api import ApiFamily, Endpoint
from sidecar.domain.objective import ObjectiveSpec, TaskFacts
from sidecar.providers.body import RequestBody

BYTES_PER_TOKEN = 4
_TASK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_EMBEDDINGS = frozenset({Endpoint.OPENAI_EMBEDDINGS, Endpoint.OLLAMA_EMBED})


def task_facts(
    endpoint: Endpoint,
    body: RequestBody,
    headers: Mapping[str, str],
    spec: ObjectiveSpec,
    body_bytes: int,
    output_tokens: int,
) -> TaskFacts:
    """The facts objective routing judges a request by."""
    document = body.document
    needs = {"embeddings" if endpoint in _EMBEDDINGS else "chat"}
    tools = bool(document.get("tools"))
    if tools:
        needs.add("tools")
    if _has_image(endpoint, document.get("messages")):
        needs.add("vision")
    task = _task(spec, headers, _prompt_chars(document), tools)
    prompt_tokens = -(-body_bytes // BYTES_PER_TOKEN)
    return TaskFacts(task, frozenset(needs), prompt_tokens, output_tokens)


def _task(spec: ObjectiveSpec, headers: Mapping[str, str], chars: int, tools: bool) -> str:
    named = headers.get(spec.task_header) if spec.task_header is not None else None
    if named is not None and _TASK_NAME.fullmatch(named):
        return named
    for rule in spec.task_rules:
        if chars >= rule.min_prompt_chars and (tools or not rule.has_tools):
            return rule.task
    return spec.default_task


def _prompt_chars(document: Mapping[str, Any]) -> int:
    """Characters of text the request asks about (messages, prompt or input)."""
    total = 0
    for message in document.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(
                len(part["text"])
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
    for field in ("prompt", "input"):
        value = document.get(field)
        if isinstance(value, str):
            total += len(value)
    return total


def _has_image(endpoint: Endpoint, messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    for message in messages:
        if not isinstance(message, dict):
            continue
        if endpoint.family is ApiFamily.OLLAMA and message.get("images"):
            return True
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") == "image_url" for part in content
        ):
            return True
    return False
