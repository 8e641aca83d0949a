"""The live state of the policy's feature flags, and what they do to routing now.

A :class:`FlagBoard` holds each flag's state and the last change (who, why, when), and
answers the router's two questions in constant time: is this cluster killed, and is
this request to pass over its primary. Pure: ``now`` comes from the caller; a change
is returned as a value for the log, the metrics and the admin view.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.domain.flags import FlagSpec
from sidecar.domain.ids import ClusterName, ModelName, TierName


class UnknownFlagError(KeyError):
    """The policy defines no flag of that name."""


@dataclass(frozen=True, slots=True)
class FlagChange:
    """A flag switched: from what to what, by whom, why and when (wall-clock seconds)."""

    flag: str
    was_on: bool
    on: bool
    actor: str
    reason: str
    at: float
    source: str


@dataclass(frozen=True, slots=True)
class _State:
    on: bool
    changed: FlagChange | None = None


class FlagBoard:
    """Every flag of one policy: on or off, and the last change of each."""

    def __init__(self, flags: Mapping[str, FlagSpec]) -> None:
        self._specs = dict(flags)
        self._states = {name: _State(spec.on_at_start) for name, spec in flags.items()}
        self._killed: dict[ClusterName, str] = {}
        self._forced: dict[ModelName, str] = {}
        self._downgraded: dict[TierName, str] = {}
        self._index()

    def set(
        self, name: str, on: bool, actor: str, reason: str, now: float, source: str = "api"
    ) -> FlagChange:
        """Switch ``name`` on or off (switching it to its state is recorded too)."""
        state = self._states.get(name)
        if state is None:
            raise UnknownFlagError(name)
        change = FlagChange(name, state.on, on, actor, reason, now, source)
        self._states[name] = _State(on, change)
        self._index()
        return change

    @property
    def specs(self) -> dict[str, FlagSpec]:
        return dict(self._specs)

    def carry_over(self, earlier: "FlagBoard") -> None:
        """Keep the state and last change of every flag that is still defined."""
        for name in self._states:
            if name in earlier._states:
                self._states[name] = earlier._states[name]
        self._index()

    def is_on(self, name: str) -> bool:
        return self._states[name].on

    def killed_by(self, cluster: ClusterName) -> str | None:
        """The flag that keeps ``cluster`` out now, if any."""
        return self._killed.get(cluster)

    def downgraded_by(self, tier: TierName, model: ModelName) -> str | None:
        """The flag that sends requests of ``tier`` for ``model`` past their primary."""
        return self._forced.get(model) or self._downgraded.get(tier)

    def snapshot(self) -> dict[str, Any]:
        return {name: self._describe(name) for name in sorted(self._states)}

    def _describe(self, name: str) -> dict[str, Any]:
        spec, state = self._specs[name], self._states[name]
        view: dict[str, Any] = {
            "on": state.on,
            "on_at_start": spec.on_at_start,
            "description": spec.description,
            "kill_clusters": sorted(spec.kill_clusters),
            "force_fallback": sorted(spec.force_fallback),
            "downgrade_tiers": sorted(spec.downgrade_tiers),
        }
        if state.changed is not None:
            change = state.changed
            view["last_change"] = {
                "on": change.on,
                "actor": change.actor,
                "reason": change.reason,
                "at": change.at,
                "source": change.source,
            }
        return view

    def _index(self) -> None:
        """Rebuild the lookups from the flags that are on (in name order: first wins)."""
        self._killed, self._forced, self._downgraded = {}, {}, {}
        for name in sorted(self._states):
            if not self._states[name].on:
                continue
            spec = self._specs[name]
            for cluster in spec.kill_clusters:
                self._killed.setdefault(cluster, name)
            for model in spec.force_fallback:
                self._forced.setdefault(model, name)
            for tier in spec.downgrade_tiers:
                self._downgraded.setdefault(tier, name)
