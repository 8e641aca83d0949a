"""What a response means for its cluster's breaker."""

import pytest

from sidecar.core.outcomes import classify


@pytest.mark.parametrize(
    ("status", "seconds", "failed", "slow", "why"),
    [
        (200, 0.2, False, False, "a fast success"),
        (200, 6.0, False, True, "a success whose headers came after slow_call_s"),
        (400, 0.1, False, False, "the client's mistake says nothing about the cluster"),
        (404, 0.1, False, False, "an unknown model upstream is the request's problem"),
        (429, 0.1, True, False, "the provider is rate limiting: try elsewhere"),
        (500, 0.1, True, False, "a server error"),
        (503, 0.001, True, False, "Envoy's own reply for a connect failure or reset"),
        (504, 120.0, True, True, "Envoy's timeout: failed and slow"),
    ],
)
def test_classify(status: int, seconds: float, failed: bool, slow: bool, why: str) -> None:
    result = classify(status, seconds, slow_call_s=5.0)
    assert (result.failed, result.slow) == (failed, slow), why
