"""Objective routing: task facts from the body, and the pick among candidates."""

from typing import Any

import pytest

from sidecar.core.objective import pick
from sidecar.core.pipeline import Candidate
from sidecar.domain.api import Endpoint, Provider
from sidecar.domain.ids import ClusterName
from sidecar.domain.objective import ObjectiveSpec, ProfileSpec, TaskFacts, TaskRuleSpec
from sidecar.domain.policy import ClusterSpec, Price
from sidecar.providers.body import RequestBody
from sidecar.providers.task import task_facts

SPEC = ObjectiveSpec(
    max_p95_s=2.0,
    min_accuracy=0.85,
    task_header="x-task-family",
    task_rules=(TaskRuleSpec("long", min_prompt_chars=100), TaskRuleSpec("code", has_tools=True)),
)


def cluster(name: str, price: float, accuracy: float, **extra: Any) -> ClusterSpec:
    profile = ProfileSpec(
        capabilities=extra.get("capabilities", frozenset({"chat", "tools"})),
        context_window_tokens=128_000,
        accuracy={"general": accuracy, "code": accuracy},
    )
    return ClusterSpec(
        ClusterName(name), Provider.OPENAI, name, None, price=Price(price, price), profile=profile
    )


CHEAP = cluster("cheap", 0.5, 0.78)
PREMIUM = cluster("premium", 2.5, 0.88)
DEDICATED = cluster("dedicated", 5.0, 0.90, capabilities=frozenset({"chat"}))
CANDIDATES = [Candidate(c, depth) for depth, c in enumerate((PREMIUM, DEDICATED, CHEAP))]
FACTS = TaskFacts("general", frozenset({"chat"}), 100, 100)


def latency(**p95: float) -> Any:
    return lambda name: p95.get(name)


def test_the_cheapest_candidate_meeting_the_bar_wins() -> None:
    chosen = pick(CANDIDATES, FACTS, SPEC, latency(premium=1.0, dedicated=1.0, cheap=0.2))
    assert chosen.chosen is not None
    assert (chosen.chosen.cluster.name, chosen.met) == ("premium", True)
    assert "cheapest meeting p95 <= 2s and accuracy >= 0.85 on general" in chosen.reason


def test_a_slow_candidate_misses_the_bar_and_an_unmeasured_one_gets_a_chance() -> None:
    slow = pick(CANDIDATES, FACTS, SPEC, latency(premium=3.0, dedicated=1.0))
    assert slow.chosen is not None
    assert slow.chosen.cluster.name == "dedicated"
    unmeasured = pick(CANDIDATES, FACTS, SPEC, latency(dedicated=1.0))
    assert unmeasured.chosen is not None
    assert unmeasured.chosen.cluster.name == "premium"


def test_when_none_meets_the_policy_says_what_wins() -> None:
    all_slow = latency(premium=3.0, dedicated=4.0, cheap=2.5)
    accurate = pick(CANDIDATES, FACTS, SPEC, all_slow)
    assert accurate.chosen is not None
    assert (accurate.chosen.cluster.name, accurate.met) == ("dedicated", False)
    assert "objective missed" in accurate.reason
    fastest = pick(CANDIDATES, FACTS, ObjectiveSpec(2.0, 0.85, "lowest_latency"), all_slow)
    assert fastest.chosen is not None
    assert fastest.chosen.cluster.name == "cheap"


def test_capabilities_and_context_windows_filter_first() -> None:
    tools = TaskFacts("code", frozenset({"chat", "tools"}), 100, 100)
    chosen = pick(CANDIDATES[1:2], tools, SPEC, latency())
    assert chosen.chosen is None
    assert "needs chat, tools" in chosen.reason
    huge = TaskFacts("general", frozenset({"chat"}), 200_000, 100)
    assert pick(CANDIDATES, huge, SPEC, latency()).chosen is None


@pytest.mark.parametrize(
    ("document", "headers", "task", "needs"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, {}, "general", {"chat"}),
        ({"messages": [{"role": "user", "content": "x" * 150}]}, {}, "long", {"chat"}),
        ({"messages": [], "tools": [{"type": "function"}]}, {}, "code", {"chat", "tools"}),
        ({"messages": []}, {"x-task-family": "legal"}, "legal", {"chat"}),
        ({"messages": []}, {"x-task-family": "Not A Task!"}, "general", {"chat"}),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            {},
            "general",
            {"chat", "vision"},
        ),
    ],
)
def test_task_facts(
    document: dict[str, Any], headers: dict[str, str], task: str, needs: set[str]
) -> None:
    body = RequestBody({"model": "assistant", **document}, "assistant")
    facts = task_facts(Endpoint.OPENAI_CHAT, body, headers, SPEC, body_bytes=400, output_tokens=50)
    assert (facts.task, facts.needs) == (task, frozenset(needs))
    assert facts.tokens == 150


def test_a_downgrade_takes_the_cheapest_cluster_that_can_take_the_request() -> None:
    chosen = pick(CANDIDATES, FACTS, SPEC, latency(), cheapest_only=True)
    assert chosen.chosen is not None
    assert chosen.chosen.cluster.name == "cheap"
    assert not chosen.met, "cheap misses the accuracy bar: the downgrade says so"
    assert "downgraded" in chosen.reason
