"""Compiling the policy's runtime controls: flags, canaries, SLOs and objectives."""

from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

from sidecar.domain.canary import (
    DEFAULT_MAX_ERROR_RATE_INCREASE,
    DEFAULT_MINIMUM_REQUESTS,
    DEFAULT_WINDOW,
    CanarySpec,
    RollbackSpec,
)
from sidecar.domain.flags import FlagSpec
from sidecar.domain.ids import ClusterName, ModelName, TierName
from sidecar.domain.objective import (
    BEST_ACCURACY,
    DEFAULT_TASK,
    ObjectiveSpec,
    ProfileSpec,
    TaskRuleSpec,
)
from sidecar.domain.slo import (
    DEFAULT_BURN_RATE,
    DEFAULT_LONG_WINDOW_S,
    DEFAULT_SHORT_WINDOW_S,
    SloSpec,
)
from sidecar.domain.slo import DEFAULT_MINIMUM_REQUESTS as SLO_MINIMUM_REQUESTS
from sidecar.policy.yaml_source import FieldPath

_REFERENCES = (
    ("kill_clusters", "clusters", "cluster"),
    ("force_fallback", "models", "virtual model"),
    ("downgrade_tiers", "tiers", "tier"),
)


def flag_problems(message: Any) -> Iterator[tuple[FieldPath, str]]:
    """Flags that name clusters, models or tiers the policy lacks, or do nothing."""
    for name, flag in sorted(message.flags.items()):
        if not any(getattr(flag, field) for field, _, _ in _REFERENCES):
            yield (
                ("flags", name),
                "this flag does nothing: set kill_clusters, force_fallback or downgrade_tiers",
            )
        for field, section, kind in _REFERENCES:
            known = getattr(message, section)
            for position, value in enumerate(getattr(flag, field)):
                if value not in known:
                    names = ", ".join(sorted(known)) or "none defined"
                    yield (
                        ("flags", name, field, position),
                        f"unknown {kind} '{value}' (known: {names})",
                    )


def build_flags(message: Any) -> MappingProxyType[str, FlagSpec]:
    return MappingProxyType(
        {
            name: FlagSpec(
                name=name,
                description=flag.description,
                on_at_start=flag.on_at_start,
                kill_clusters=frozenset(ClusterName(c) for c in flag.kill_clusters),
                force_fallback=frozenset(ModelName(m) for m in flag.force_fallback),
                downgrade_tiers=frozenset(TierName(t) for t in flag.downgrade_tiers),
            )
            for name, flag in sorted(message.flags.items())
        }
    )


def canary_problems(message: Any) -> Iterator[tuple[FieldPath, str]]:
    """Canaries that name a missing cluster, their own route's, or no user header."""
    for tier_name, tier in sorted(message.tiers.items()):
        for model, route in sorted(tier.routes.items()):
            if not route.HasField("canary"):
                continue
            path: FieldPath = ("tiers", tier_name, "routes", model, "canary")
            canary = route.canary
            if canary.cluster not in message.clusters:
                names = ", ".join(sorted(message.clusters))
                yield ((*path, "cluster"), f"unknown cluster '{canary.cluster}' (known: {names})")
            elif canary.cluster in (route.cluster, *route.fallback):
                yield ((*path, "cluster"), f"'{canary.cluster}' is already in the route's chain")
            if canary.sticky == "user" and not canary.user_header:
                yield ((*path, "user_header"), "sticky: user needs the header naming the user")


def build_canary(route: Any) -> CanarySpec | None:
    if not route.HasField("canary"):
        return None
    canary = route.canary
    rollback = None
    if canary.HasField("rollback"):
        spec = canary.rollback
        rollback = RollbackSpec(
            window=spec.window or DEFAULT_WINDOW,
            minimum_requests=spec.minimum_requests or DEFAULT_MINIMUM_REQUESTS,
            max_error_rate_increase=(spec.max_error_rate_increase_percent / 100)
            or DEFAULT_MAX_ERROR_RATE_INCREASE,
            max_latency_ratio=spec.max_latency_ratio or None,
        )
    return CanarySpec(
        cluster=ClusterName(canary.cluster),
        weight_percent=canary.weight_percent,
        sticky_user_header=canary.user_header if canary.sticky == "user" else None,
        rollback=rollback,
    )


def slo_problems(message: Any) -> Iterator[tuple[FieldPath, str]]:
    """SLOs that name a flag the policy lacks, or windows in the wrong order."""
    for name, model in sorted(message.models.items()):
        if not model.HasField("slo"):
            continue
        slo = model.slo
        if slo.flag not in message.flags:
            known = ", ".join(sorted(message.flags)) or "none defined"
            yield (("models", name, "slo", "flag"), f"unknown flag '{slo.flag}' (known: {known})")
        short = slo.short_window_s or DEFAULT_SHORT_WINDOW_S
        long = slo.long_window_s or DEFAULT_LONG_WINDOW_S
        if short >= long:
            yield (("models", name, "slo"), "short_window_s must be shorter than long_window_s")


def build_slo(model: Any) -> SloSpec | None:
    if not model.HasField("slo"):
        return None
    slo = model.slo
    return SloSpec(
        objective=slo.availability_percent / 100,
        flag=slo.flag,
        latency_s=slo.latency_s or None,
        short_window_s=slo.short_window_s or DEFAULT_SHORT_WINDOW_S,
        long_window_s=slo.long_window_s or DEFAULT_LONG_WINDOW_S,
        burn_rate=slo.burn_rate or DEFAULT_BURN_RATE,
        minimum_requests=slo.minimum_requests or SLO_MINIMUM_REQUESTS,
    )


def objective_problems(message: Any) -> Iterator[tuple[FieldPath, str]]:
    """Objectives whose candidates have no profile to judge them by."""
    for name, model in sorted(message.models.items()):
        if not model.HasField("objective"):
            continue
        objective = model.objective
        if not objective.max_p95_s and not objective.min_accuracy:
            yield (("models", name, "objective"), "set max_p95_s, min_accuracy or both")
        for tier_name, tier in sorted(message.tiers.items()):
            route = tier.routes.get(name)
            if route is None:
                continue
            for cluster in (route.cluster, *route.fallback):
                known = message.clusters.get(cluster)
                if known is not None and objective.min_accuracy and not known.HasField("profile"):
                    yield (
                        ("tiers", tier_name, "routes", name),
                        f"cluster '{cluster}' has no profile, so its accuracy is unknown "
                        "to the objective",
                    )


def build_profile(cluster: Any) -> ProfileSpec | None:
    if not cluster.HasField("profile"):
        return None
    profile = cluster.profile
    return ProfileSpec(
        capabilities=frozenset(profile.capabilities),
        context_window_tokens=profile.context_window_tokens or None,
        accuracy=MappingProxyType(dict(profile.accuracy)),
        accuracy_source=profile.accuracy_source,
    )


def build_objective(model: Any) -> ObjectiveSpec | None:
    if not model.HasField("objective"):
        return None
    spec = model.objective
    rules = tuple(
        TaskRuleSpec(rule.task, rule.min_prompt_chars, rule.has_tools) for rule in spec.task_rules
    )
    return ObjectiveSpec(
        max_p95_s=spec.max_p95_s or None,
        min_accuracy=spec.min_accuracy or None,
        when_none_meets=spec.when_none_meets or BEST_ACCURACY,
        task_header=spec.task_header or None,
        task_rules=rules,
        default_task=spec.default_task or DEFAULT_TASK,
        min_latency_samples=spec.min_latency_samples or 10,
    )
