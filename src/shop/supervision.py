"""Background tasks that are restarted when they crash and stopped cleanly on shutdown, the one
way to keep trying something until the service stops (`keep_trying`), and the small waits and
callbacks around them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import tenacity

from shop.clock import SYSTEM, Clock

log = logging.getLogger(__name__)

T = TypeVar("T")
Worker = Callable[[asyncio.Event], Awaitable[None]]
RESTART_WAIT = tenacity.wait_exponential(multiplier=0.5, max=10.0)


async def first_of(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Wait until any of `events` is set, or `timeout` seconds pass."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def keep_trying(
    attempt: Callable[[], Awaitable[T]],
    stopping: asyncio.Event,
    *,
    wait: tenacity.wait.wait_base,
    on_failure: Callable[[BaseException | None, float], None],
    clock: Clock = SYSTEM,
) -> T | None:
    """What `attempt()` returns once a try succeeds, or None once `stopping` is set.

    A try that raises is reported (`on_failure(error, pause)`) and made again after the pause
    `wait` gives; a pause ends early when the service stops, and no try starts after that.
    """

    async def unless_stopped() -> T | None:
        return None if stopping.is_set() else await attempt()

    return await tenacity.AsyncRetrying(
        wait=wait,
        sleep=partial(clock.sleep, stopping=stopping),
        before_sleep=lambda state: on_failure(failure(state), state.upcoming_sleep),
    )(unless_stopped)


def retrieve(future: asyncio.Future[Any]) -> None:
    """A done callback that marks the future's failure as seen (no "never retrieved" warning):
    for a future whose waiters may all have gone, or that no one awaits."""
    if not future.cancelled():
        future.exception()


def failure(state: tenacity.RetryCallState) -> BaseException | None:
    """What the last try raised."""
    return state.outcome.exception() if state.outcome else None


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
        def crashed(error: BaseException | None, delay: float) -> None:
            log.error(
                "background task %s crashed; restarting in %.1fs", name, delay, exc_info=error
            )

        run = partial(worker, self.stopping)
        await keep_trying(run, self.stopping, wait=RESTART_WAIT, on_failure=crashed)

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
