"""SLO burn: windows, the two-window rule that switches the flag, and what counts as bad."""

from dataclasses import replace

import pytest

from sidecar.core.slo import BurnWindow, SloBoard, request_was_bad
from sidecar.domain.ids import ModelName
from sidecar.domain.slo import SloSpec

CHAT = ModelName("chat")
SPEC = SloSpec(
    objective=0.9,
    flag="degraded",
    short_window_s=10,
    long_window_s=60,
    burn_rate=2,
    minimum_requests=5,
)


def test_a_window_forgets_what_is_older_than_its_span() -> None:
    window = BurnWindow(10)
    for second in range(5):
        window.add(True, 100.0 + second)
    window.add(False, 109.5)
    assert (window.requests, window.bad) == (6, 5)
    window.prune(112.0)
    assert (window.requests, window.bad) == (3, 2)
    assert window.burn_rate(0.1) == pytest.approx((2 / 3) / 0.1)


def test_both_windows_must_burn_before_the_flag_goes_on_and_it_goes_off_after() -> None:
    board = SloBoard({CHAT: SPEC})
    now = 1000.0
    for _ in range(40):  # a long good history: the long window burns slowly
        assert board.observe(CHAT, False, now) is None
        now += 1.0
    verdicts = []
    for _ in range(12):
        verdict = board.observe(CHAT, True, now)
        if verdict is not None:
            verdicts.append(verdict)
        now += 0.5
    assert [v.on for v in verdicts] == [True]
    assert "burning its error budget" in verdicts[0].reason
    assert board.snapshot(now)[CHAT]["burning"] is True
    now += 11.0  # the short window empties of bad requests
    verdict = board.observe(CHAT, False, now)
    assert verdict is not None
    assert not verdict.on
    assert "burn subsided" in verdict.reason


def test_no_verdict_before_the_short_window_has_enough_requests() -> None:
    board = SloBoard({CHAT: SPEC})
    assert [board.observe(CHAT, True, 1.0 + i) for i in range(4)] == [None] * 4


@pytest.mark.parametrize(
    ("outcome", "status", "ttfb", "latency", "bad"),
    [
        ("routed", 200, 0.1, None, False),
        ("routed", 503, 0.1, None, True),
        ("routed", 200, 3.0, 2.0, True),
        ("routed", 200, 1.0, 2.0, False),
        ("routed", 404, 0.1, None, None),
        ("rejected", 400, None, None, None),
        ("shed", 503, None, None, True),
        ("degraded", 200, None, None, True),
        ("cache", 200, None, None, True),
        ("queued", 202, None, None, True),
        ("error", 500, None, None, True),
        ("cancelled", None, None, None, None),
        ("cost_cache", 200, None, None, False),
    ],
)
def test_what_spends_error_budget(
    outcome: str, status: int | None, ttfb: float | None, latency: float | None, bad: bool | None
) -> None:
    assert request_was_bad(outcome, status, ttfb, latency) is bad


def test_a_changed_slo_that_was_burning_can_still_switch_its_flag_off() -> None:
    earlier = SloBoard({CHAT: SPEC})
    now = 0.0
    for _ in range(10):
        earlier.observe(CHAT, True, now)
        now += 0.1
    assert earlier.snapshot(now)[CHAT]["burning"]
    later = SloBoard({CHAT: replace(SPEC, objective=0.95)})
    later.carry_over(earlier)
    verdict = later.observe(CHAT, False, now + 100)
    assert verdict is not None
    assert not verdict.on
