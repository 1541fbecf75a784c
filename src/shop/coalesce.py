"""Group commit: requests that arrive while a batch is being stored share the next batch.

Under load this turns many small transactions (each with its round trips and, for a popular
product, its turn on the same row lock) into one transaction per few milliseconds; with a
single request in flight it costs nothing but a task switch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from shop.tasks import first_of

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")

# One outcome per request: its result, or the exception to raise for it.
BatchHandler = Callable[[Sequence[Req]], Awaitable[Sequence[Res | Exception]]]


class Coalescer(Generic[Req, Res]):
    """Collects requests and hands them to `handler` in batches of at most `max_batch`."""

    def __init__(self, handler: BatchHandler[Req, Res], *, max_batch: int, timeout: float) -> None:
        self._handler = handler
        self._max_batch = max_batch
        self._timeout = timeout
        self._pending: list[tuple[Req, asyncio.Future[Res]]] = []
        self._wake = asyncio.Event()

    async def submit(self, request: Req) -> Res:
        """The outcome of `request` once its batch is stored (raises what the batch raised)."""
        future: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        # Retrieve the outcome even if our caller timed out, so no "never retrieved" warning.
        future.add_done_callback(_consume)
        self._pending.append((request, future))
        self._wake.set()
        async with asyncio.timeout(self._timeout):
            return await asyncio.shield(future)

    async def run(self, stopping: asyncio.Event) -> None:
        """Store batches until `stopping` is set and nothing is pending."""
        while not (stopping.is_set() and not self._pending):
            if not self._pending:
                self._wake.clear()
                await first_of(self._wake, stopping)
                continue
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            await self._settle(batch)

    async def _settle(self, batch: list[tuple[Req, asyncio.Future[Res]]]) -> None:
        try:
            outcomes = await self._handler([request for request, _ in batch])
        except Exception as exc:  # the whole batch failed: every request gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
