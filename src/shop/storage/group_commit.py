"""Group commit: requests that arrive while a batch is being stored share the next batch.

Under load this turns many small transactions (each with its round trips and, for a popular
product, its turn on the same row lock) into one transaction per few milliseconds; with a
single request in flight it costs nothing but a task switch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from opentelemetry.trace import SpanContext

from shop import tracing
from shop.errors import Unavailable
from shop.supervision import retrieve

Req = TypeVar("Req")
Res = TypeVar("Res")

# One outcome per request: its result, or the exception to raise for it.
BatchHandler = Callable[[Sequence[Req]], Awaitable[Sequence[Res | Exception]]]
# The attributes of a batch's span, given the requests in it that are traced.
Describe = Callable[[Sequence[Req]], Mapping[str, str | int | Sequence[str]]]


@dataclass(slots=True, eq=False)
class _Entry(Generic[Req, Res]):
    request: Req
    future: asyncio.Future[Res]
    expiry: asyncio.TimerHandle | None = None
    trace: SpanContext | None = None  # its request's span, when traced
    taken: bool = False  # in a batch: its outcome is being decided


class Coalescer(Generic[Req, Res]):
    """Collects requests and hands them to `handler` in batches of at most `max_batch`.

    A request waits at most `timeout` seconds to be taken into a batch; one that is not taken by
    then, or whose caller goes away, is dropped and never reaches the handler (its caller was
    told it failed: storing it anyway would make a retry a second order). Once taken, its
    caller waits for the batch's outcome, which the handler bounds. At most `max_pending`
    requests wait: beyond that, `submit` refuses at once.

    A request costs a future and a timer, nothing more: an `asyncio.timeout` and a `shield` per
    request, and two tasks each time the batch loop went idle, were about 5 % of a sync order's
    CPU.
    """

    def __init__(
        self,
        handler: BatchHandler[Req, Res],
        *,
        max_batch: int,
        max_pending: int,
        timeout: float,
        describe: Describe[Req] | None = None,
    ) -> None:
        self._handler = handler
        self._describe = describe
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._timeout = timeout
        self._pending: list[_Entry[Req, Res]] = []
        self._idle: asyncio.Future[None] | None = None  # the batch loop waits on it

    async def submit(self, request: Req) -> Res:
        """The outcome of `request` once its batch is stored (raises what the batch raised)."""
        if len(self._pending) >= self._max_pending:
            raise Unavailable("Too many orders are waiting to be stored; retry shortly.")
        loop = asyncio.get_running_loop()
        entry: _Entry[Req, Res] = _Entry(request, loop.create_future(), trace=tracing.current())
        # Retrieve the outcome even if our caller went away, so no "never retrieved" warning.
        entry.future.add_done_callback(retrieve)
        entry.expiry = loop.call_later(self._timeout, self._expire, entry)
        self._pending.append(entry)
        self._wake()
        try:
            return await entry.future
        except asyncio.CancelledError:  # the caller went away
            if not entry.taken:
                self._drop(entry)
            raise

    def _expire(self, entry: _Entry[Req, Res]) -> None:
        if entry.taken or entry.future.done():
            return
        self._drop(entry)
        entry.future.set_exception(
            Unavailable(f"The order was not stored within {self._timeout:g}s; it was not placed.")
        )

    def _drop(self, entry: _Entry[Req, Res]) -> None:
        if entry.expiry is not None:
            entry.expiry.cancel()
        with contextlib.suppress(ValueError):
            self._pending.remove(entry)

    def _wake(self) -> None:
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def run(self, stopping: asyncio.Event) -> None:
        """Store batches until `stopping` is set and nothing is pending."""
        loop = asyncio.get_running_loop()
        stop = asyncio.ensure_future(stopping.wait())
        stop.add_done_callback(lambda _: self._wake())
        try:
            while not (stopping.is_set() and not self._pending):
                if not self._pending:
                    self._idle = loop.create_future()
                    await self._idle
                    continue
                batch = [e for e in self._pending[: self._max_batch] if not e.future.done()]
                del self._pending[: self._max_batch]
                for entry in batch:
                    entry.taken = True
                    if entry.expiry is not None:
                        entry.expiry.cancel()
                if batch:
                    await self._settle(batch)
        finally:
            stop.cancel()

    async def _settle(self, batch: list[_Entry[Req, Res]]) -> None:
        traced = [entry for entry in batch if entry.trace is not None]  # (none when off)
        attributes: dict[str, str | int | Sequence[str]] | None = None
        if traced:
            attributes = {"shop.batch.size": len(batch)}
            if self._describe is not None:
                attributes.update(self._describe([entry.request for entry in traced]))
        try:
            parents = [entry.trace for entry in traced]
            with tracing.span("group commit", parents=parents, attributes=attributes):
                outcomes = await self._handler([entry.request for entry in batch])
        except Exception as exc:  # the whole batch failed: every request gets the error
            outcomes = [exc] * len(batch)
        for entry, outcome in zip(batch, outcomes, strict=True):
            if entry.future.done():
                continue
            if isinstance(outcome, Exception):
                entry.future.set_exception(outcome)
            else:
                entry.future.set_result(outcome)
