"""Objective routing as the policy states it: model profiles and each model's bar."""

from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_TASK = "general"
BEST_ACCURACY = "best_accuracy"
LOWEST_LATENCY = "lowest_latency"


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """What a cluster's model can do (capabilities, context window) and how well."""

    capabilities: frozenset[str] = frozenset()
    context_window_tokens: int | None = None
    accuracy: Mapping[str, float] = field(default_factory=dict)
    accuracy_source: str = ""

    def accuracy_for(self, task: str) -> float:
        """Accuracy on ``task``; a task the operator measured nothing for scores 0."""
        return self.accuracy.get(task, 0.0)


@dataclass(frozen=True, slots=True)
class TaskRuleSpec:
    """Names ``task`` for requests at least ``min_prompt_chars`` long (and with tools)."""

    task: str
    min_prompt_chars: int = 0
    has_tools: bool = False


@dataclass(frozen=True, slots=True)
class ObjectiveSpec:
    """The bar a model's requests must meet, what wins when none does, and the task."""

    max_p95_s: float | None = None
    min_accuracy: float | None = None
    when_none_meets: str = BEST_ACCURACY
    task_header: str | None = None
    task_rules: tuple[TaskRuleSpec, ...] = ()
    default_task: str = DEFAULT_TASK
    min_latency_samples: int = 10


@dataclass(frozen=True, slots=True)
class TaskFacts:
    """A request's task family, the capabilities it needs, and the tokens it may take."""

    task: str
    needs: frozenset[str]
    prompt_tokens: int
    output_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens
