"""Waiting for a condition that another task or process makes true.

Used where the state lives outside the test's control (a gRPC server task, another
process); time in the code under test is never waited out this way.
"""

import asyncio
from collections.abc import Awaitable, Callable


async def wait_until(
    condition: Callable[[], bool] | Callable[[], Awaitable[bool]], timeout_s: float = 10.0
) -> None:
    """Return once ``condition()`` is true; fail the test after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            outcome = condition()
            if not isinstance(outcome, bool):
                outcome = await outcome
            if outcome:
                return
            await asyncio.sleep(0.01)
