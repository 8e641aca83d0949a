"""Runtime fault injection for the fake model servers: what a fault is and which one is active.

A fault is set with `PUT /_control/fault` and applies to the AI endpoints only:

- `{"mode": "fail", "status": 503, "retry_after": 5}`: answer with that status and an error body.
- `{"mode": "stall"}`: hold the request until the fault is set or cleared again, the server
  stops, the client goes away, or `max_stall_s` passes; then answer normally.
- `{"mode": "reset"}`: drop the TCP connection without any response.
- `{"mode": "fail_midstream"}`: send the response headers and the first chunk, then drop
  the connection.
- `{"latency_ms": 200}`: wait before the response headers (alone or with a mode).
- `{"chunk_delay_ms": 50}`: wait between streamed chunks.
- `{"count": N}`: only the next N requests see the fault; then it clears itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

FaultMode = Literal["fail", "stall", "reset", "fail_midstream"]
FAULT_MODES: tuple[FaultMode, ...] = ("fail", "stall", "reset", "fail_midstream")
DEFAULT_FAIL_STATUS = 503
MAX_DELAY_MS = 300_000
_FIELDS = frozenset({"mode", "status", "count", "retry_after", "latency_ms", "chunk_delay_ms"})
_FAIL_ONLY_FIELDS = ("status", "retry_after")


class FaultSpecError(ValueError):
    """A fault description that the control endpoint rejects."""


@dataclass(frozen=True)
class Fault:
    """One fault description, validated."""

    mode: FaultMode | None = None
    status: int | None = None
    count: int | None = None
    retry_after: int | None = None
    latency_ms: int = 0
    chunk_delay_ms: int = 0

    @classmethod
    def from_json(cls, data: object) -> Fault:
        """Validate a decoded JSON fault description; raise `FaultSpecError` if it is bad."""
        if not isinstance(data, dict):
            raise FaultSpecError("a fault must be a JSON object")
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise FaultSpecError(f"unknown fault fields: {', '.join(unknown)}")
        mode = _parse_mode(data.get("mode"))
        _check_fail_only_fields(data, mode)
        fault = cls(
            mode=mode,
            status=_optional_int(data, "status", 400, 599) or _default_status(mode),
            count=_optional_int(data, "count", 1, None),
            retry_after=_optional_int(data, "retry_after", 0, None),
            latency_ms=_optional_int(data, "latency_ms", 0, MAX_DELAY_MS) or 0,
            chunk_delay_ms=_optional_int(data, "chunk_delay_ms", 0, MAX_DELAY_MS) or 0,
        )
        if fault.mode is None and not (fault.latency_ms or fault.chunk_delay_ms):
            raise FaultSpecError(
                "the fault sets nothing: give a mode, latency_ms or chunk_delay_ms"
                " (DELETE /_control/fault clears a fault)"
            )
        return fault

    def to_json(self) -> dict[str, Any]:
        """Return the fault as JSON, leaving out unset fields."""
        fields: dict[str, Any] = {
            "mode": self.mode,
            "status": self.status,
            "count": self.count,
            "retry_after": self.retry_after,
            "latency_ms": self.latency_ms,
            "chunk_delay_ms": self.chunk_delay_ms,
        }
        return {key: value for key, value in fields.items() if value is not None}


NO_FAULT = Fault()


def _parse_mode(value: object) -> FaultMode | None:
    if value is None:
        return None
    for mode in FAULT_MODES:
        if value == mode:
            return mode
    raise FaultSpecError(f"mode must be one of {', '.join(FAULT_MODES)}; got {value!r}")


def _check_fail_only_fields(data: Mapping[str, object], mode: FaultMode | None) -> None:
    if mode == "fail":
        return
    for key in _FAIL_ONLY_FIELDS:
        if key in data:
            raise FaultSpecError(f"{key} only applies to mode 'fail'")


def _default_status(mode: FaultMode | None) -> int | None:
    return DEFAULT_FAIL_STATUS if mode == "fail" else None


def _optional_int(
    data: Mapping[str, object], key: str, minimum: int, maximum: int | None
) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise FaultSpecError(f"{key} must be an integer; got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        raise FaultSpecError(f"{key} must be at least {minimum}{upper}; got {value}")
    return value


class FaultState:
    """The active fault of one server, its remaining count, and the requests it stalls."""

    def __init__(self) -> None:
        self._fault: Fault | None = None
        self._remaining: int | None = None
        self._stalled = 0
        self._changed = asyncio.Event()
        self._stalled_changed = asyncio.Event()

    @property
    def stalled(self) -> int:
        """How many requests are stalled right now."""
        return self._stalled

    def set(self, fault: Fault) -> None:
        """Make `fault` the active fault; this releases the requests stalled so far."""
        self._fault = fault
        self._remaining = fault.count
        self.release_stalled()

    def clear(self) -> None:
        """Clear the active fault; this releases the stalled requests."""
        self._fault = None
        self._remaining = None
        self.release_stalled()

    def describe(self) -> dict[str, Any] | None:
        """Return the active fault as JSON with its remaining count, or None."""
        if self._fault is None:
            return None
        return {**self._fault.to_json(), "remaining": self._remaining}

    def take(self) -> Fault:
        """Return the fault for a request arriving now (`NO_FAULT` if none); count it down.

        A fault whose count runs out clears itself without releasing stalled requests.
        """
        fault = self._fault
        if fault is None:
            return NO_FAULT
        if self._remaining is not None:
            self._remaining -= 1
            if self._remaining <= 0:
                self._fault = None
                self._remaining = None
        return fault

    async def stall(self, max_stall_s: float) -> None:
        """Wait until the stalled requests are released, or `max_stall_s` passes."""
        released = self._changed
        self._set_stalled(self._stalled + 1)
        try:
            async with asyncio.timeout(max_stall_s):
                await released.wait()
        except TimeoutError:
            pass
        finally:
            self._set_stalled(self._stalled - 1)

    def release_stalled(self) -> None:
        """Let every stalled request go on (on a fault change and at server shutdown)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_stalled(self, count: int) -> None:
        """Wait until exactly `count` requests are stalled."""
        while self._stalled != count:
            await self._stalled_changed.wait()

    def _set_stalled(self, count: int) -> None:
        self._stalled = count
        self._stalled_changed.set()
        self._stalled_changed = asyncio.Event()
