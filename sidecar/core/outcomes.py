"""What an upstream answer means for its cluster's breaker."""

from sidecar.core.breaker import CallResult

_OVERLOADED = 429


def classify(status: int, seconds_to_headers: float, slow_call_s: float) -> CallResult:
    """Judge a response by its status and how long its headers took.

    5xx (Envoy's own replies for connect failures, resets and timeouts included) and
    429 are failures; other statuses are the client's business and count as success.
    Headers later than ``slow_call_s`` make the call slow, whatever the status.
    """
    failed = status >= 500 or status == _OVERLOADED
    slow = seconds_to_headers > slow_call_s
    detail = f"{status} after {seconds_to_headers:.3f}s"
    return CallResult(failed=failed, slow=slow, detail=detail)
