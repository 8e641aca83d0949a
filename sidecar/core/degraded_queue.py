"""Requests parked when nothing could answer them, for an operator to drain later.

Bounded: when full, new requests are refused rather than older ones dropped. Pure.
"""

from collections import deque
from dataclasses import dataclass
from typing import Any

from sidecar.domain.ids import ModelName, TenantId


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """A parked request: who sent it, for which model, its body, and when."""

    request_id: str
    tenant: TenantId
    model: ModelName
    path: str
    body: dict[str, Any]
    queued_at: float


class DegradedQueue:
    """Parked requests in arrival order, at most ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self._items: deque[QueuedRequest] = deque()
        self.capacity = capacity

    def park(self, request: QueuedRequest) -> bool:
        """Keep ``request``; False when the queue is full."""
        if len(self._items) >= self.capacity:
            return False
        self._items.append(request)
        return True

    def drain(self, limit: int) -> list[QueuedRequest]:
        """Hand out (and forget) up to ``limit`` of the oldest requests."""
        count = min(limit, len(self._items))
        return [self._items.popleft() for _ in range(count)]

    def __len__(self) -> int:
        return len(self._items)
