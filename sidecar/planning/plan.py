"""``python -m sidecar plan``: a policy's monthly cost, p95 and accuracy before deploy.

For a traffic mix (:mod:`sidecar.planning.traffic`) the planner works out, per
variant, where each slice of traffic goes and what that costs: the policy's own
routing (objective routing where a model has an objective, the route's primary
elsewhere) and, for comparison, every cluster a slice could use serving it alone. For
each variant: the expected monthly cost at the clusters' prices, the p95 (the worst
expected p95 among the clusters that carry traffic: a fleet is as slow as its slowest
busy part), and the mean accuracy weighted by traffic. The cheapest variant that meets
the bars is marked.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sidecar.core.objective import pick
from sidecar.core.pipeline import Candidate
from sidecar.domain.ids import ClusterName, ModelName, TierName
from sidecar.domain.objective import TaskFacts
from sidecar.domain.policy import ClusterSpec, Policy
from sidecar.planning.traffic import MixEntry, Traffic, TrafficError

POLICY_VARIANT = "policy"


@dataclass(frozen=True, slots=True)
class VariantResult:
    """What one variant comes to over a month of the traffic mix."""

    name: str
    monthly_cost_usd: float
    p95_s: float | None
    mean_accuracy: float
    meets_bars: bool
    clusters: dict[str, float]
    """Share of the traffic each cluster carries."""


def plan(policy: Policy, traffic: Traffic) -> list[VariantResult]:
    """Every variant's result, the policy's first, then each single cluster, by cost."""
    unknown = sorted(set(traffic.p95_s) - set(policy.clusters))
    if unknown:
        raise TrafficError(f"p95_s names clusters the policy lacks: {', '.join(unknown)}")
    candidates = {entry: _candidates(policy, entry) for entry in traffic.mix}
    variants = {
        POLICY_VARIANT: {e: _policy_choice(policy, traffic, e, candidates[e]) for e in traffic.mix}
    }
    every = sorted({c.name for options in candidates.values() for c in options})
    for name in every:
        if all(any(c.name == name for c in candidates[e]) for e in traffic.mix):
            variants[f"all on {name}"] = {
                e: policy.clusters[ClusterName(name)] for e in traffic.mix
            }
    results = [_result(name, choice, traffic) for name, choice in variants.items()]
    return [results[0], *sorted(results[1:], key=lambda r: r.monthly_cost_usd)]


def cheapest_meeting(results: list[VariantResult]) -> VariantResult | None:
    meeting = [r for r in results if r.meets_bars]
    return min(meeting, key=lambda r: r.monthly_cost_usd) if meeting else None


def _candidates(policy: Policy, entry: MixEntry) -> list[ClusterSpec]:
    tier = policy.tiers.get(TierName(entry.tier))
    route = tier.routes.get(ModelName(entry.model)) if tier is not None else None
    if tier is None:
        raise TrafficError(f"mix: unknown tier '{entry.tier}' (known: {', '.join(policy.tiers)})")
    if route is None:
        raise TrafficError(f"mix: tier '{entry.tier}' has no route for model '{entry.model}'")
    return [policy.clusters[name] for name in route.chain]


def _policy_choice(
    policy: Policy, traffic: Traffic, entry: MixEntry, candidates: list[ClusterSpec]
) -> ClusterSpec:
    objective = policy.models[ModelName(entry.model)].objective
    if objective is None:
        return candidates[0]
    facts = TaskFacts(entry.task, frozenset({"chat"}), entry.prompt_tokens, entry.completion_tokens)
    options = [Candidate(cluster, depth) for depth, cluster in enumerate(candidates)]
    chosen = pick(options, facts, objective, lambda name: traffic.p95_s.get(name)).chosen
    if chosen is None:
        raise TrafficError(
            f"mix: no cluster of tier '{entry.tier}' for '{entry.model}' can take a request of "
            f"{entry.prompt_tokens + entry.completion_tokens} tokens (context windows)"
        )
    return chosen.cluster


def _result(name: str, choice: dict[MixEntry, ClusterSpec], traffic: Traffic) -> VariantResult:
    cost = 0.0
    accuracy = 0.0
    shares: dict[str, float] = {}
    for entry, cluster in choice.items():
        requests = traffic.requests_per_month * entry.share
        if cluster.price is not None:
            cost += requests * cluster.price.cost_usd(entry.prompt_tokens, entry.completion_tokens)
        profile = cluster.profile
        accuracy += entry.share * (profile.accuracy_for(entry.task) if profile else 0.0)
        shares[cluster.name] = shares.get(cluster.name, 0.0) + entry.share
    known = [traffic.p95_s[c] for c in shares if c in traffic.p95_s]
    p95 = max(known) if len(known) == len(shares) else None
    meets = (traffic.max_p95_s is None or (p95 is not None and p95 <= traffic.max_p95_s)) and (
        traffic.min_accuracy is None or accuracy >= traffic.min_accuracy - 1e-9
    )
    return VariantResult(name, round(cost, 2), p95, round(accuracy, 4), meets, shares)


def render_table(results: list[VariantResult], traffic: Traffic) -> str:
    """The results as a plain-text table, the cheapest variant meeting the bars marked."""
    best = cheapest_meeting(results)
    lines = [
        f"{'variant':36} {'cost / month':>14} {'p95':>8} {'accuracy':>9}  meets bars",
        "-" * 84,
    ]
    for r in results:
        p95 = f"{r.p95_s:.2f}s" if r.p95_s is not None else "?"
        mark = "yes" if r.meets_bars else "no"
        star = "  <- cheapest that meets the bars" if best is not None and r is best else ""
        lines.append(
            f"{r.name:36} {'$' + format(r.monthly_cost_usd, ',.2f'):>14} {p95:>8} "
            f"{r.mean_accuracy:>9.3f}  {mark}{star}"
        )
    bars = []
    if traffic.max_p95_s is not None:
        bars.append(f"p95 <= {traffic.max_p95_s:g}s")
    if traffic.min_accuracy is not None:
        bars.append(f"mean accuracy >= {traffic.min_accuracy:g}")
    stated = " and ".join(bars) or "none"
    lines.append(f"\n{traffic.requests_per_month:,.0f} requests a month; bars: {stated}")
    return "\n".join(lines)


def write_json(results: list[VariantResult], path: Path) -> None:
    best = cheapest_meeting(results)
    document = {
        "variants": [asdict(result) for result in results],
        "cheapest_meeting_bars": best.name if best is not None else None,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
