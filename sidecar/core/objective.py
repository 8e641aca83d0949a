"""Objective routing: the cheapest candidate that meets the bar, or the best of the rest.

:func:`pick` orders the candidates a route leaves (after breakers, pools and flags):
first those that can take the request at all (capabilities, context window); among
them, those meeting the bar (live p95 of total time under ``max_p95_s``, accuracy on
the request's task at least ``min_accuracy``) from the cheapest for this request; when
none meets it, the best by accuracy or by latency, as the policy says. A cluster with
no latency samples yet counts as meeting the latency bar, so a recovered or new
cluster gets traffic again and is measured. Pure.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sidecar.core.pipeline import Candidate
from sidecar.domain.ids import ClusterName
from sidecar.domain.objective import LOWEST_LATENCY, ObjectiveSpec, TaskFacts


@dataclass(frozen=True, slots=True)
class Pick:
    """The candidate chosen, whether it met the bar, and why; or why none could serve."""

    chosen: Candidate | None
    met: bool
    reason: str


def pick(
    candidates: Sequence[Candidate],
    facts: TaskFacts,
    spec: ObjectiveSpec,
    p95: Callable[[ClusterName], float | None],
    cheapest_only: bool = False,
) -> Pick:
    """Choose among ``candidates`` for a request with ``facts`` under ``spec``.

    ``cheapest_only``: the cheapest candidate that can take the request, bar or not.
    """
    able = [c for c in candidates if _can_take(c, facts)]
    if not able:
        needs = ", ".join(sorted(facts.needs))
        return Pick(None, False, f"no cluster can take it (needs {needs}, {facts.tokens} tokens)")
    if cheapest_only:
        chosen = min(able, key=lambda c: (_cost(c, facts), c.depth))
        return Pick(chosen, _meets(chosen, facts, spec, p95), "downgraded: the cheapest cluster")
    meeting = [c for c in able if _meets(c, facts, spec, p95)]
    if meeting:
        chosen = min(meeting, key=lambda c: (_cost(c, facts), c.depth))
        return Pick(chosen, True, f"objective: cheapest meeting {_bar(spec, facts)}")
    if spec.when_none_meets == LOWEST_LATENCY:
        chosen = min(able, key=lambda c: (_p95_or_inf(p95(c.cluster.name)), c.depth))
        why = "lowest latency"
    else:
        chosen = max(able, key=lambda c: (_accuracy(c, facts), -c.depth))
        why = "best accuracy"
    return Pick(chosen, False, f"objective missed: none meets {_bar(spec, facts)}; {why}")


def _can_take(candidate: Candidate, facts: TaskFacts) -> bool:
    profile = candidate.cluster.profile
    if profile is None:
        return True
    if profile.capabilities and not facts.needs <= profile.capabilities:
        return False
    window = profile.context_window_tokens
    return window is None or facts.tokens <= window


def _meets(
    candidate: Candidate,
    facts: TaskFacts,
    spec: ObjectiveSpec,
    p95: Callable[[ClusterName], float | None],
) -> bool:
    if spec.min_accuracy is not None and _accuracy(candidate, facts) < spec.min_accuracy:
        return False
    latency = p95(candidate.cluster.name)
    return spec.max_p95_s is None or latency is None or latency <= spec.max_p95_s


def _accuracy(candidate: Candidate, facts: TaskFacts) -> float:
    profile = candidate.cluster.profile
    return profile.accuracy_for(facts.task) if profile is not None else 0.0


def _cost(candidate: Candidate, facts: TaskFacts) -> float:
    price = candidate.cluster.price
    if price is None:
        return 0.0
    return price.cost_usd(facts.prompt_tokens, facts.output_tokens)


def _p95_or_inf(value: float | None) -> float:
    return math.inf if value is None else value


def _bar(spec: ObjectiveSpec, facts: TaskFacts) -> str:
    parts = []
    if spec.max_p95_s is not None:
        parts.append(f"p95 <= {spec.max_p95_s:g}s")
    if spec.min_accuracy is not None:
        parts.append(f"accuracy >= {spec.min_accuracy:g} on {facts.task}")
    return " and ".join(parts)
