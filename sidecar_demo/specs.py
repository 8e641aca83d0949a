"""What a fake model server is: its name, the API it speaks, its model and its address."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ModelApi = Literal["openai", "ollama"]


@dataclass(frozen=True)
class ModelServerSpec:
    """One fake upstream model server.

    Every answer names `model`, whatever model the request asked for, so a test can tell
    which server answered. `port` 0 picks a free port (see `ModelServers.base_urls`).
    """

    name: str
    api: ModelApi
    model: str
    port: int
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        """The configured address as an http URL (meaningless for port 0)."""
        return f"http://{self.host}:{self.port}"


DEMO_FLEET: tuple[ModelServerSpec, ...] = (
    ModelServerSpec(name="passthrough", api="openai", model="echo", port=18000),
    ModelServerSpec(name="openai-cheap", api="openai", model="gpt-4o-mini", port=18001),
    ModelServerSpec(name="openai-premium", api="openai", model="gpt-4o", port=18002),
    ModelServerSpec(
        name="enterprise-dedicated", api="openai", model="gpt-4o-enterprise", port=18003
    ),
    ModelServerSpec(name="ollama-local", api="ollama", model="llama3.2", port=18004),
    # JSON services of a fraud-scoring chain: they answer any path with an echo.
    ModelServerSpec(name="fraud-model", api="openai", model="fraud-v1", port=18005),
    ModelServerSpec(name="rules-engine", api="openai", model="rules-v1", port=18006),
)
