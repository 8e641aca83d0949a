"""A request's priority for shedding: its tier's, adjusted by trusted header rules."""

from collections.abc import Mapping, Sequence

from sidecar.domain.ids import TenantId
from sidecar.domain.policy import PriorityRule, TierSpec


def priority_of(
    tier: TierSpec,
    headers: Mapping[str, str],
    rules: Sequence[PriorityRule],
    tenant: TenantId,
) -> int:
    """The tier's priority plus the adjustment of the first matching band of each rule.

    A header that is absent or not a number adjusts nothing. A rule may raise the
    priority only of its trusted tenants; anyone may lower their own.
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
                if band.adjust < 0 or tenant in rule.trusted_tenants:
                    priority += band.adjust
                break
    return priority
