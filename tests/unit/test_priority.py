"""Priority for shedding: the tier's, moved by trusted header bands."""

import pytest

from sidecar.core.priority import priority_of
from sidecar.domain.ids import ClusterName, ModelName, TenantId, TierName
from sidecar.domain.policy import PriorityBand, PriorityRule, RouteSpec, TierSpec

TIER = TierSpec(TierName("free"), {ModelName("chat"): RouteSpec((ClusterName("c"),))}, "free", 10)
RULE = PriorityRule(
    "x-transaction-amount",
    (PriorityBand(10_000, None, 40), PriorityBand(None, 1, -20)),
    frozenset({TenantId("bank")}),
)


@pytest.mark.parametrize(
    ("tenant", "amount", "expected", "why"),
    [
        ("bank", "50000", 50, "a trusted tenant's large payment goes first"),
        ("bank", "0.5", -10, "a micro payment is shed first"),
        ("bank", "500", 10, "no band matches: the tier's priority"),
        ("shop", "50000", 10, "an untrusted tenant cannot raise its own priority"),
        ("shop", "0.5", -10, "anyone may lower their own"),
        ("bank", "a lot", 10, "a header that is not a number adjusts nothing"),
        ("bank", None, 10, "no header: the tier's priority"),
    ],
)
def test_priority(tenant: str, amount: str | None, expected: int, why: str) -> None:
    headers = {} if amount is None else {"x-transaction-amount": amount}
    assert priority_of(TIER, headers, [RULE], TenantId(tenant)) == expected, why
