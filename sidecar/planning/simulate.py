"""``python -m sidecar simulate``: a day of traffic through the real routing core.

Requests of the traffic mix arrive evenly (``requests_per_month`` spread over 30 days)
for ``duration_s`` of simulated time, on a fake clock. Each is routed by the real
:func:`~sidecar.core.router.route` with the real breakers, pools-free fleet and live
latency: a decision's clusters are tried in order, as Envoy would fail over, and a
failure script decides how each call goes (a cluster ``down`` fails every call, a
``slow`` one answers after ``latency_s``; otherwise a cluster answers within its
expected p95). Requests no cluster can take go down the degradation ladder. The report
gives availability, which rung answered what, spend, and latency, and the CPU time
the simulation took.
"""

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar.core.breaker import CallResult
from sidecar.core.fleet import Fleet
from sidecar.core.latency import nearest_rank
from sidecar.core.router import ActivePolicy, RouteRequest, Unavailable, route
from sidecar.domain.api import Endpoint
from sidecar.domain.ids import ClusterName, ModelName, TierName
from sidecar.domain.objective import TaskFacts
from sidecar.domain.outcome import Decision, Rejection
from sidecar.domain.policy import Policy, TenantSpec
from sidecar.planning.traffic import MixEntry, Traffic, TrafficError

SECONDS_PER_MONTH = 30 * 86_400
DEFAULT_LATENCY_S = 1.0


@dataclass(frozen=True, slots=True)
class Failure:
    """A cluster ``down`` or ``slow`` (answering after ``latency_s``) from ``start`` to ``end``."""

    cluster: str
    start_s: float
    end_s: float
    mode: str
    latency_s: float = 0.0


@dataclass
class Report:
    """What a simulated period came to."""

    requests: int = 0
    rungs: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)
    spend_usd: float = 0.0
    latencies: list[float] = field(default_factory=list)
    breaker_trips: int = 0
    cpu_s: float = 0.0

    @property
    def availability(self) -> float:
        answered = self.rungs["primary"] + self.rungs["fallback"]
        return answered / self.requests if self.requests else 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "requests": self.requests,
            "availability": round(self.availability, 6),
            "rungs": dict(self.rungs),
            "served_by": dict(self.served_by),
            "spend_usd": round(self.spend_usd, 2),
            "latency_p50_s": nearest_rank(ordered, 0.5),
            "latency_p95_s": nearest_rank(ordered, 0.95),
            "breaker_trips": self.breaker_trips,
            "cpu_s": round(self.cpu_s, 2),
        }


def load_failures(path: Path, policy: Policy) -> tuple[float, tuple[Failure, ...]]:
    """The simulated duration and the failure script from a YAML file, checked."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise TrafficError(f"{path}: cannot read: {error}") from None
    if not isinstance(data, dict):
        raise TrafficError(f"{path}: expected a mapping with duration_s and failures")
    duration = _positive(path, "duration_s", data.get("duration_s", 86_400))
    failures = tuple(
        _failure(path, f"failures[{n}]", item, policy)
        for n, item in enumerate(data.get("failures") or [])
    )
    return duration, failures


def _failure(path: Path, where: str, item: Any, policy: Policy) -> Failure:
    if not isinstance(item, dict) or item.get("mode") not in ("down", "slow"):
        raise TrafficError(f"{path}: {where}: needs a cluster and mode down or slow")
    cluster = str(item.get("cluster", ""))
    if ClusterName(cluster) not in policy.clusters:
        known = ", ".join(sorted(policy.clusters))
        raise TrafficError(f"{path}: {where}: unknown cluster '{cluster}' (known: {known})")
    start = _number(path, f"{where}.from_s", item.get("from_s", 0))
    end = _number(path, f"{where}.to_s", item.get("to_s"))
    if end <= start:
        raise TrafficError(f"{path}: {where}: to_s must come after from_s")
    latency = 0.0
    if item["mode"] == "slow":
        latency = _positive(path, f"{where}.latency_s", item.get("latency_s"))
    return Failure(cluster, start, end, str(item["mode"]), latency)


def _number(path: Path, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise TrafficError(f"{path}: {where}: expected a number >= 0, got {value!r}")
    return float(value)


def _positive(path: Path, where: str, value: Any) -> float:
    number = _number(path, where, value)
    if number <= 0:
        raise TrafficError(f"{path}: {where}: must be more than 0")
    return number


def simulate(
    active: ActivePolicy,
    traffic: Traffic,
    duration_s: float,
    failures: tuple[Failure, ...],
    seed: int = 1,
) -> Report:
    """Route ``duration_s`` of the traffic through ``active``'s policy on a fake clock."""
    started = time.process_time()
    policy = active.policy
    fleet = Fleet(policy)
    tenants = {entry: _tenant_of(policy, entry.tier) for entry in traffic.mix}
    rng = random.Random(seed)
    report = Report()
    interval = SECONDS_PER_MONTH / traffic.requests_per_month
    weights = [entry.share for entry in traffic.mix]
    now = 0.0
    while now < duration_s:
        entry = rng.choices(traffic.mix, weights)[0]
        _one(active, fleet, traffic, entry, tenants[entry], failures, now, rng, report)
        now += interval
    report.cpu_s = time.process_time() - started
    return report


def _one(
    active: ActivePolicy,
    fleet: Fleet,
    traffic: Traffic,
    entry: MixEntry,
    tenant: TenantSpec,
    failures: tuple[Failure, ...],
    now: float,
    rng: random.Random,
    report: Report,
) -> None:
    report.requests += 1
    facts = TaskFacts(entry.task, frozenset({"chat"}), entry.prompt_tokens, entry.completion_tokens)
    request = RouteRequest(tenant, Endpoint.OPENAI_CHAT, entry.model, task=facts)
    decision = route(request, active, fleet, now)
    if isinstance(decision, Rejection):
        report.rungs["rejected"] += 1
        return
    if isinstance(decision, Unavailable):
        report.rungs[_ladder(active.policy, decision)] += 1
        return
    _call(decision, fleet, active.policy, (traffic, entry), failures, now, rng, report)


def _call(
    decision: Decision,
    fleet: Fleet,
    policy: Policy,
    load: tuple[Traffic, MixEntry],
    failures: tuple[Failure, ...],
    now: float,
    rng: random.Random,
    report: Report,
) -> None:
    traffic, entry = load
    waited = 0.0
    for depth, cluster in enumerate(decision.failover_hops):
        permit = fleet.start_call(cluster, now).permit
        if permit is None:
            break  # Envoy would not get further than an open breaker's trial limit
        latency, failed = _outcome(cluster, traffic, failures, now, rng)
        waited += latency
        slow_after = fleet.breakers[cluster].config.slow_call_s
        result = CallResult(failed=failed, slow=latency > slow_after, detail="simulated")
        moves = fleet.finish_call(permit, result, now + latency)
        report.breaker_trips += sum(1 for move in moves if move.new.value == "open")
        if failed:
            continue
        fleet.latency.observe(cluster, latency, latency, now + latency)
        rung = "primary" if decision.fallback_depth + depth == 0 else "fallback"
        report.rungs[rung] += 1
        report.served_by[cluster] += 1
        report.latencies.append(waited)
        price = policy.clusters[cluster].price
        if price is not None:
            report.spend_usd += price.cost_usd(entry.prompt_tokens, entry.completion_tokens)
        return
    report.rungs["failed"] += 1


def _outcome(
    cluster: ClusterName,
    traffic: Traffic,
    failures: tuple[Failure, ...],
    now: float,
    rng: random.Random,
) -> tuple[float, bool]:
    """(latency, failed) of one call to ``cluster`` at ``now``."""
    for failure in failures:
        if failure.cluster == cluster and failure.start_s <= now < failure.end_s:
            if failure.mode == "down":
                return 0.01, True
            return failure.latency_s, False
    p95 = traffic.p95_s.get(cluster, DEFAULT_LATENCY_S)
    return p95 * rng.uniform(0.4, 1.0), False


def _ladder(policy: Policy, out: Unavailable) -> str:
    spec = policy.models[ModelName(out.requested_model)]
    if spec.degraded is not None and spec.degraded.queue_max is not None:
        return "queued"
    if spec.degraded is not None:
        return "degraded"
    return "unavailable"


def _tenant_of(policy: Policy, tier: str) -> TenantSpec:
    for tenant in policy.tenants.values():
        if tenant.tier == TierName(tier):
            return tenant
    raise TrafficError(f"no tenant of tier '{tier}' in the policy to simulate its traffic")


def render(report: Report, duration_s: float) -> str:
    summary = report.summary()
    lines = [
        f"simulated {_duration(duration_s)}: {report.requests:,} requests "
        f"in {summary['cpu_s']} s of CPU",
        f"availability (answered by a model): {report.availability:.4%}",
        "answered by: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report.rungs.items())),
        "clusters: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report.served_by.items())),
        f"spend: ${report.spend_usd:,.2f}",
        f"latency p50 {summary['latency_p50_s'] or 0:.2f} s, "
        f"p95 {summary['latency_p95_s'] or 0:.2f} s",
        f"breaker trips: {report.breaker_trips}",
    ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.4g} h"
    return f"{seconds / 60:.4g} min"
