"""A small async client for the control endpoints of a fake model server (used by tests)."""

from __future__ import annotations

from typing import Any

import aiohttp


class FaultControlError(RuntimeError):
    """A control endpoint answered with a non-2xx status."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} answered HTTP {status}: {body}")
        self.status = status
        self.body = body


class FaultControl:
    """Drive the `/_control` endpoints of one fake model server."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self._base_url = base_url.rstrip("/")
        self._session = session

    async def set_fault(self, **fields: Any) -> dict[str, Any]:
        """Set the active fault, e.g. `set_fault(mode="fail", status=503, count=1)`."""
        answer = await self._call("PUT", "/_control/fault", json_body=fields)
        fault = answer.get("fault")
        if not isinstance(fault, dict):
            raise TypeError(f"the server accepted the fault but described it as {fault!r}")
        return fault

    async def clear_fault(self) -> None:
        await self._call("DELETE", "/_control/fault")

    async def current_fault(self) -> dict[str, Any] | None:
        """Return the active fault with its remaining count, or None."""
        fault = (await self._call("GET", "/_control/fault")).get("fault")
        return fault if isinstance(fault, dict) else None

    async def wait_for_stalled(self, count: int = 1) -> None:
        """Wait until exactly `count` requests are stalled (the server bounds the wait)."""
        await self._call("GET", f"/_control/stalled?count={count}")

    async def recorded_requests(self) -> list[dict[str, Any]]:
        """Return the requests the server recorded, oldest first."""
        requests = (await self._call("GET", "/_control/requests")).get("requests")
        if not isinstance(requests, list):
            raise TypeError(f"expected a list of recorded requests, got {requests!r}")
        return requests

    async def clear_recorded(self) -> None:
        await self._call("DELETE", "/_control/requests")

    async def _call(
        self, method: str, path: str, json_body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        url = self._base_url + path
        async with self._session.request(method, url, json=json_body) as response:
            text = await response.text()
            if not 200 <= response.status < 300:
                raise FaultControlError(method, url, response.status, text)
            answer = await response.json()
        if not isinstance(answer, dict):
            raise TypeError(f"{method} {url} answered {answer!r}, not a JSON object")
        return answer
