"""Feature flags as the policy names them: what each does to routing while it is on."""

from dataclasses import dataclass

from sidecar.domain.ids import ClusterName, ModelName, TierName


@dataclass(frozen=True, slots=True)
class FlagSpec:
    """A flag: its name, its state at start, and its effects while on."""

    name: str
    description: str = ""
    on_at_start: bool = False
    kill_clusters: frozenset[ClusterName] = frozenset()
    force_fallback: frozenset[ModelName] = frozenset()
    downgrade_tiers: frozenset[TierName] = frozenset()
