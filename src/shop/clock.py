"""The time that caches, rate limits and retries read, passed in so that tests move it.

`monotonic` measures intervals (a price's time to live, a bucket's refill, a JWKS refresh);
`wall` is the date, for what carries one (a token's `exp`); `sleep` waits between tries, or
less once `stopping` is set. Production code defaults to `SYSTEM`; a unit test passes a
subclass whose time it sets and whose `sleep` moves that time instead of waiting. Hot paths
keep the bound method (`SYSTEM.monotonic` is `time.monotonic` itself), so it costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class Clock:
    """The process's clocks, and asyncio's timers for waiting."""

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    async def sleep(self, seconds: float, stopping: asyncio.Event | None = None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await (stopping or asyncio.Event()).wait()


SYSTEM = Clock()
