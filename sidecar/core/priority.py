"""A request's priority for shedding: its tier's, adjusted by trusted header rules."""

from collections.abc import Mapping, Sequence

from sidecar.domain.policy import PriorityRule, TierSpec


def priority_of(tier: TierSpec, headers: Mapping[str, str], rules: Sequence[PriorityRule]) -> int:
    """The tier's priority plus the adjustment of the first matching band of each rule.

    A header that is absent or not a number adjusts nothing.
    """
    priority = tier.priority
    for rule in rules:
        raw = headers.get(rule.header)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        for band in rule.bands:
            if band.matches(value):
                priority += band.adjust
                break
    return priority
