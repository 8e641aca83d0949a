"""Compiling the policy's feature flags: references checked, values built."""

from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

from sidecar.domain.flags import FlagSpec
from sidecar.domain.ids import ClusterName, ModelName, TierName
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
