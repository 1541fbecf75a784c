"""The order consumer: one thin loop for both brokers, through the inbound port.

Take a batch, decode it, hand the commands to `process_order_batch` (one transaction), then
settle every delivery exactly once: dead-letter what can never be placed (undecodable, invalid
as intake would have found its body, or refused by the service with a reason), ack the rest.
Nothing read is trusted: a command put on the broker by anyone but intake is checked as
intake checks a request. Nothing is settled before the service
returned, so a crash or a stop redelivers the whole batch, which the service skips as stored.
A transient failure (database down) is retried with backoff, holding the batch unsettled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol

from opentelemetry.trace import SpanContext, SpanKind
from prometheus_client import Counter, Gauge

from shop import tracing
from shop.clock import SYSTEM
from shop.messaging.ports import D, Inbound
from shop.orders.models import OrderCommand
from shop.settings import Orders

log = logging.getLogger(__name__)

DEAD_LETTERS = Counter("order_dead_letters_total", "Order commands dead-lettered", ["channel"])
CONSUMER_FAILURES = Counter(
    "order_consumer_failures_total", "Batches that failed and were retried", ["channel"]
)
QUEUE_DEPTH = Gauge(
    "order_queue_depth",
    "Commands waiting: Kafka consumer lag or RabbitMQ ready messages",
    ["channel"],
    multiprocess_mode="max",
)

LINGER_MORE = 10  # deliveries a linger step must bring to take another (Orders.consumer_linger_*)


class OrderBatchProcessor(Protocol):
    """What the loop needs from the order service."""

    async def process_order_batch(self, commands: Sequence[OrderCommand]) -> Sequence[str | None]:
        """Per command, in order: None when done (stored now or before), else the reason to
        dead-letter it. Raises only for transient failures."""


def decode(body: bytes, channel: str) -> OrderCommand | str:
    """The command in `body`, read from `channel`'s broker, or why there is none: its fields
    as intake validates a body and its key (`OrderCommand`), and the channel it was accepted
    for. (The service checks the rest, as at intake.)"""
    try:
        if not body:
            raise ValueError("empty message")
        command = OrderCommand.model_validate_json(body)
    except ValueError as exc:  # pydantic's ValidationError is one
        return f"invalid order command: {exc}"[:500]
    if command.channel != channel:
        return f"invalid order command: channel: {command.channel!r} read from {channel}"
    return command


async def run_order_consumer(
    stopping: asyncio.Event,
    *,
    channel: str,
    inbound: Inbound[D],
    service: OrderBatchProcessor,
    settings: Orders,
) -> None:
    """Consume order commands until `stopping` is set."""
    batch_size = settings.consumer_batch_size

    async def fill(batch: Sequence[D]) -> list[D]:
        """Let a batch grow while deliveries keep arriving fast (Orders.consumer_linger_seconds)."""
        filled = list(batch)
        deadline = asyncio.get_running_loop().time() + settings.consumer_linger_max_seconds
        while len(filled) < batch_size and not stopping.is_set():
            await SYSTEM.sleep(settings.consumer_linger_seconds, stopping)
            more = await inbound.take(batch_size - len(filled), 0)
            filled += more
            if len(more) < LINGER_MORE or asyncio.get_running_loop().time() >= deadline:
                break
        return filled

    async def handle(batch: Sequence[D]) -> bool:
        """Process and settle one batch; False when the service stopped before it was done."""
        decoded = [decode(delivery.body, channel) for delivery in batch]
        commands = [d for d in decoded if isinstance(d, OrderCommand)]
        verdicts: Sequence[str | None] = ()
        if commands:

            async def process() -> None:
                nonlocal verdicts
                verdicts = await service.process_order_batch(commands)
                if len(verdicts) != len(commands):
                    raise RuntimeError(f"{len(verdicts)} verdicts for {len(commands)} commands")

            parents = traced(batch)
            with tracing.span(
                f"process {channel} orders",
                kind=SpanKind.CONSUMER,
                parents=parents,
                attributes=batch_attributes(commands, decoded, parents) if any(parents) else None,
            ):
                if not await until_done("storing a batch", process):
                    return False
                if log.isEnabledFor(logging.DEBUG):
                    for command, verdict in zip(commands, verdicts, strict=True):
                        log.debug(
                            "order %s from %s: %s",
                            command.id,
                            channel,
                            verdict or "stored",
                            extra={"order_id": str(command.id)},
                        )
        reasons = iter(verdicts)
        done: list[D] = []
        for delivery, item in zip(batch, decoded, strict=True):
            reason = next(reasons) if isinstance(item, OrderCommand) else item
            if reason is None:
                done.append(delivery)
                continue
            log.warning("%s consumer: dead-lettering a message: %s", channel, reason)
            settle = partial(inbound.dead_letter, delivery, reason)
            if not await until_done("dead-lettering", settle):
                return False
            DEAD_LETTERS.labels(channel).inc()
        if done:
            await inbound.ack(done)
        return True

    def traced(batch: Sequence[D]) -> list[SpanContext | None]:
        """The span each delivery's publisher sent it from (read as untrusted input)."""
        if not tracing.enabled():
            return []
        return [tracing.parse(inbound.header(d, tracing.TRACEPARENT)) for d in batch]

    async def until_done(what: str, attempt: Callable[[], Awaitable[None]]) -> bool:
        """Retry `attempt` with backoff until it succeeds (True) or the service stops (False)."""
        delay = settings.consumer_retry_first_seconds
        while True:
            try:
                await attempt()
                return True
            except Exception as exc:
                CONSUMER_FAILURES.labels(channel).inc()
                log.warning(
                    "%s consumer: %s failed (%r); retrying in %.1fs", channel, what, exc, delay
                )
            await SYSTEM.sleep(delay, stopping)  # none when stopping is set already
            if stopping.is_set():
                return False
            delay = min(delay * 2, settings.consumer_retry_max_seconds)

    while not stopping.is_set():
        batch = await inbound.take(batch_size, settings.consumer_take_seconds)
        if 1 < len(batch) < batch_size:
            batch = await fill(batch)
        if batch and not await handle(batch):
            return  # stopping mid-retry: nothing settled, so all of it is delivered again


def batch_attributes(
    commands: Sequence[OrderCommand],
    decoded: Sequence[object],
    parents: Sequence[SpanContext | None],
) -> dict[str, int | tuple[str, ...]]:
    """A traced batch's size, and the orders whose traces it joins (the others' ids would cost
    it 2 us each, and no search could find them in a list)."""
    traced = (
        d.id for d, p in zip(decoded, parents, strict=True) if p and isinstance(d, OrderCommand)
    )
    return {"messaging.batch.message_count": len(commands), tracing.ORDER_IDS: tracing.ids(traced)}


async def watch_depth(
    stopping: asyncio.Event, channel: str, depth: Callable[[], Awaitable[int]], every: float
) -> None:
    """Publish the queue depth / consumer lag as a gauge every `every` seconds."""
    while not stopping.is_set():
        try:
            QUEUE_DEPTH.labels(channel).set(await depth())
        except Exception as exc:  # a gauge is best effort
            log.debug("could not read %s depth: %s", channel, exc)
        await SYSTEM.sleep(every, stopping)
