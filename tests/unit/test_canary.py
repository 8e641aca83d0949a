"""Canary routing: sticky variants by weight, and the judge that rolls a canary back."""

import pytest

from sidecar.core.canary import CanaryBoard, variant_of
from sidecar.domain.canary import CanarySpec, RollbackSpec
from sidecar.domain.ids import ClusterName, ModelName, TierName

ROUTE = (TierName("paid"), ModelName("chat"))


def spec(**rollback: float) -> CanarySpec:
    judge = RollbackSpec(window=10, minimum_requests=5, **rollback)  # type: ignore[arg-type]
    return CanarySpec(ClusterName("new"), 50.0, "x-user-id", judge)


def test_variants_are_sticky_and_follow_the_weight() -> None:
    keys = [f"user-{n}" for n in range(2000)]
    at_10 = {key for key in keys if variant_of(ROUTE, key, 10) == "canary"}
    at_30 = {key for key in keys if variant_of(ROUTE, key, 30) == "canary"}
    assert 120 < len(at_10) < 280
    assert at_10 <= at_30, "raising the weight only moves keys to the canary"
    assert all(variant_of(ROUTE, key, 30) == variant_of(ROUTE, key, 30) for key in keys[:50])
    assert variant_of(ROUTE, "anyone", 0) == "baseline"
    assert variant_of(ROUTE, "anyone", 100) == "canary"


def feed(board: CanaryBoard, variant: str, failures: int, total: int, latency: float = 0.1):
    rolled = None
    for n in range(total):
        rolled = board.observe(ROUTE, variant, n < failures, latency, now=10.0) or rolled
    return rolled


def test_a_canary_that_errs_more_than_allowed_rolls_back() -> None:
    board = CanaryBoard({ROUTE: spec(max_error_rate_increase=0.2)})
    assert feed(board, "baseline", 0, 5) is None
    assert feed(board, "canary", 1, 5) is None, "20 points more is still allowed"
    rolled = feed(board, "canary", 2, 2)
    assert rolled is not None
    assert "error rate" in rolled.reason
    assert board.weight(ROUTE) == 0
    assert board.snapshot()["paid/chat"]["set_by"] == "rollback"


def test_no_judgement_before_both_variants_have_enough_requests() -> None:
    board = CanaryBoard({ROUTE: spec()})
    assert feed(board, "canary", 5, 5) is None
    assert board.weight(ROUTE) == 50


def test_a_slow_canary_rolls_back_on_latency() -> None:
    board = CanaryBoard({ROUTE: spec(max_latency_ratio=2.0)})
    feed(board, "baseline", 0, 5, latency=0.1)
    rolled = feed(board, "canary", 0, 5, latency=0.5)
    assert rolled is not None
    assert "p95 latency 500 ms" in rolled.reason


def test_an_operator_puts_a_rolled_back_canary_back_with_fresh_windows() -> None:
    board = CanaryBoard({ROUTE: spec()})
    feed(board, "baseline", 0, 5)
    assert feed(board, "canary", 5, 5) is not None
    board.set_weight(ROUTE, 25, "release-bot")
    view = board.snapshot()["paid/chat"]
    assert (view["weight_percent"], view["set_by"]) == (25, "release-bot")
    assert "rolled_back" not in view
    assert view["variants"]["canary"]["requests"] == 0


@pytest.mark.parametrize("weight", [0.0, 100.0])
def test_reload_keeps_an_unchanged_canary(weight: float) -> None:
    earlier = CanaryBoard({ROUTE: spec()})
    earlier.set_weight(ROUTE, weight, "oncall")
    later = CanaryBoard({ROUTE: spec()})
    later.carry_over(earlier)
    assert later.weight(ROUTE) == weight
