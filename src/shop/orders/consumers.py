"""The two order-command consumers: thin loops that decode, call the service, then ack.

Both share one shape: take a batch, send what can never be processed to the dead-letter
destination (with the reason), store the rest in one transaction through
`OrderService.process_order_batch`, and only then commit offsets / ack. A transient failure
(database down) is retried with backoff, holding the batch unacknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

from aiormq.abc import DeliveredMessage
from confluent_kafka import Message
from prometheus_client import Counter, Gauge
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from shop.brokers.kafka import KafkaBatchConsumer, KafkaPublisher
from shop.brokers.rabbitmq import RabbitMQ
from shop.orders.models import OrderCommand
from shop.orders.service import OrderService
from shop.tasks import pause

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

M = TypeVar("M")
_TRANSIENT = (OperationalError, InterfaceError, TimeoutError, IntegrityError, ConnectionError)


@dataclass(frozen=True, slots=True)
class Decoded(Generic[M]):
    commands: list[tuple[M, OrderCommand]]
    poison: list[tuple[M, str]]


def decode(messages: Sequence[M], body: Callable[[M], bytes | None]) -> Decoded[M]:
    """Split a batch into valid commands and messages that can never be processed."""
    commands, poison = [], []
    for message in messages:
        raw = body(message)
        try:
            if not raw:
                raise ValueError("empty message")
            commands.append((message, OrderCommand.model_validate_json(raw)))
        except (ValidationError, ValueError) as exc:
            poison.append((message, f"invalid order command: {exc}"[:500]))
    return Decoded(commands, poison)


async def _until_done(
    what: str, channel: str, stopping: asyncio.Event, attempt: Callable[[], Awaitable[None]]
) -> bool:
    """Retry `attempt` with backoff until it succeeds (True) or the service stops (False)."""
    delay = 0.1
    while True:
        try:
            await attempt()
            return True
        except Exception as exc:
            CONSUMER_FAILURES.labels(channel).inc()
            log.warning("%s consumer: %s failed (%r); retrying in %.1fs", channel, what, exc, delay)
        if stopping.is_set():
            return False
        await pause(stopping, delay)
        delay = min(delay * 2, 5.0)


class _Processor(Generic[M]):
    """What both consumers do with a decoded batch."""

    def __init__(
        self,
        channel: str,
        service: OrderService,
        dead_letter: Callable[[M, str], Awaitable[None]],
    ) -> None:
        self.channel = channel
        self._service = service
        self._dead_letter = dead_letter

    async def handle(self, batch: Decoded[M], stopping: asyncio.Event) -> bool:
        """Dead-letter the poison, store the commands; True when all of it is done."""
        for message, reason in batch.poison:
            log.warning("%s consumer: dead-lettering a message: %s", self.channel, reason)
            if not await _until_done(
                "dead-lettering",
                self.channel,
                stopping,
                partial(self._dead_letter, message, reason),
            ):
                return False
            DEAD_LETTERS.labels(self.channel).inc()
        if not batch.commands:
            return True
        return await _until_done(
            "storing a batch", self.channel, stopping, lambda: self._store(batch)
        )

    async def _store(self, batch: Decoded[M]) -> None:
        commands = [command for _, command in batch.commands]
        try:
            await self._service.process_order_batch(commands)
        except _TRANSIENT:
            raise
        except DBAPIError as exc:
            # Not an outage: something in the batch the database refuses. Find it one by one.
            log.error("%s consumer: batch refused (%s); processing one by one", self.channel, exc)
            await self._one_by_one(batch)

    async def _one_by_one(self, batch: Decoded[M]) -> None:
        for message, command in batch.commands:
            try:
                await self._service.process_order_batch([command])
            except _TRANSIENT:
                raise
            except DBAPIError as exc:
                await self._dead_letter(message, f"refused by the database: {exc}"[:500])
                DEAD_LETTERS.labels(self.channel).inc()


async def run_kafka_consumer(
    stopping: asyncio.Event,
    *,
    consumer: KafkaBatchConsumer,
    service: OrderService,
    dlq: KafkaPublisher,
    dlq_topic: str,
    batch_size: int,
) -> None:
    """Consume the order topic until `stopping` is set; offsets stored after each commit."""

    async def dead_letter(message: Message, reason: str) -> None:
        source = f"{message.topic()}:{message.partition()}:{message.offset()}"
        key = message.key()
        await dlq.publish_many(
            dlq_topic,
            [(key.decode(errors="replace") if key else "", message.value() or b"")],
            headers=[("reason", reason.encode()), ("source", source.encode())],
        )

    processor: _Processor[Message] = _Processor("kafka", service, dead_letter)
    while not stopping.is_set():
        messages = await consumer.poll_batch(max_messages=batch_size, timeout=0.25)
        if not messages:
            continue
        if not await processor.handle(decode(messages, Message.value), stopping):
            return  # stopping mid-batch: not stored, so delivered again later
        await consumer.store(messages)


async def run_rabbitmq_consumer(
    stopping: asyncio.Event,
    *,
    rabbit: RabbitMQ,
    service: OrderService,
    batch_size: int,
    timeout: float,
) -> None:
    """Consume the order queue until `stopping` is set; acks after each commit."""

    async def dead_letter(message: DeliveredMessage, reason: str) -> None:
        await rabbit.publish(
            message.body,
            message_id=message.header.properties.message_id or "",
            timeout=timeout,
            headers={"x-reason": reason},
            dead_letter=True,
        )
        await _ack(message)  # a stale delivery (channel died) comes back and goes again

    processor: _Processor[DeliveredMessage] = _Processor("rabbitmq", service, dead_letter)
    starting = asyncio.ensure_future(rabbit.start_consuming())
    stop_wait = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait([starting, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            return
        inbox = starting.result()  # raises if consuming could not start: we are restarted
        while not stopping.is_set():
            batch = await _take(inbox, batch_size)
            if not batch:
                continue
            decoded = decode(batch, lambda m: m.body)
            if not await processor.handle(decoded, stopping):
                return
            await _ack_all([message for message, _ in decoded.commands])
    finally:
        starting.cancel()
        stop_wait.cancel()


async def _take(inbox: asyncio.Queue[DeliveredMessage], size: int) -> list[DeliveredMessage]:
    try:
        async with asyncio.timeout(0.25):
            first = await inbox.get()
    except TimeoutError:
        return []
    batch = [first]
    while len(batch) < size and not inbox.empty():
        batch.append(inbox.get_nowait())
    return batch


async def _ack(message: DeliveredMessage, *, multiple: bool = False) -> None:
    try:
        await message.channel.basic_ack(message.delivery_tag or 0, multiple=multiple)
    except Exception as exc:  # its channel died; the broker redelivers it and we skip it
        log.info("rabbitmq consumer: ack failed (%r); it will be redelivered", exc)


async def _ack_all(messages: list[DeliveredMessage]) -> None:
    """Ack a stored batch with one frame per channel: the newest delivery, `multiple`.

    The inbox is taken in delivery order, so every earlier delivery on that channel is in this
    batch or was acked before. Deliveries of a channel that died since (a reconnect) fail to
    ack and come back, to be skipped as stored.
    """
    newest: dict[int, DeliveredMessage] = {}
    for message in messages:
        key = id(message.channel)
        if key not in newest or (message.delivery_tag or 0) > (newest[key].delivery_tag or 0):
            newest[key] = message
    for message in newest.values():
        await _ack(message, multiple=True)


async def watch_depth(
    stopping: asyncio.Event, channel: str, depth: Callable[[], Awaitable[int]]
) -> None:
    """Publish the queue depth / consumer lag as a gauge every few seconds."""
    while not stopping.is_set():
        try:
            QUEUE_DEPTH.labels(channel).set(await depth())
        except Exception as exc:  # a gauge is best effort
            log.debug("could not read %s depth: %s", channel, exc)
        await pause(stopping, 5.0)
