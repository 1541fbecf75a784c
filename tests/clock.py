"""A clock for unit tests: time moves only when the test moves it, and sleeping moves it."""

from __future__ import annotations

import asyncio
import time

from shop.clock import Clock


class FakeClock(Clock):
    """Monotonic time from 0; the wall clock starts at the real date (tokens carry real `exp`
    dates) and moves with it. `sleep` records the pause and moves the time by it at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self._epoch = time.time()
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self._epoch + self.now

    async def sleep(self, seconds: float, stopping: asyncio.Event | None = None) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # a real pause yields to the loop: so does this one
