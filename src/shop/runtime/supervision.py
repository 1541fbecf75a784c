"""Background tasks that are restarted when they crash and stopped cleanly on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Worker = Callable[[asyncio.Event], Awaitable[None]]


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less if `stopping` is set meanwhile."""
    await first_of(stopping, timeout=seconds)


async def first_of(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Wait until any of `events` is set, or `timeout` seconds pass."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class Supervisor:
    """Runs workers until `stop()`; a worker that raises is logged and started again.

    A worker that returns is done (a long-running one returns only once `stopping` is set).
    """

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, worker: Worker) -> None:
        self._tasks.append(asyncio.create_task(self._keep_running(name, worker), name=name))

    async def _keep_running(self, name: str, worker: Worker) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                await worker(self.stopping)
                return
            except Exception:
                log.exception("background task %s crashed; restarting in %.1fs", name, delay)
                await pause(self.stopping, delay)
                delay = min(delay * 2, 10.0)

    async def stop(self, timeout: float) -> None:
        """Ask every worker to finish, wait up to `timeout`, then cancel what is left."""
        self.stopping.set()
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            log.warning("background task %s did not stop in time; cancelling", task.get_name())
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._tasks.clear()
