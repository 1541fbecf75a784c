"""One contract for the messaging adapters, run against real Kafka and real RabbitMQ.

`MessagingContract` holds the tests; `TestKafka` and `TestRabbitMQ` only say how to make a
publisher, a consumer and a dead-letter reader on a topic or queue of the test's own (as
FastStream's per-broker test classes do). Names start `test-<run>-`: the session deletes
what a failed test leaves behind.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aio_pika
import httpx
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

import devstack as stack
from devstack.settings import StackSettings
from shop.messaging.kafka import KafkaInbound, KafkaPublisher, ensure_topics
from shop.messaging.ports import Delivery, Inbound, Outbound, Outgoing
from shop.messaging.rabbitmq import RabbitInbound, RabbitPublisher
from tests.conftest import RUN, STACK
from tests.support import eventually

pytestmark = pytest.mark.integration

KEY = "k"  # one key: on Kafka every message of a test shares one partition, so order holds


class Harness(Protocol):
    """How one broker's adapters are made for a test."""

    outbound: Outbound

    async def consumer(self) -> Inbound[Any]:
        """A new consumer on the test's topic/queue (same group), ready to take."""
        ...

    async def close_consumer(self, inbound: Inbound[Any]) -> None: ...

    async def dead_letters(self, count: int) -> list[tuple[bytes, str]]:
        """The first `count` (body, reason) pairs on the dead-letter destination."""
        ...

    async def restart_broker(self) -> None: ...

    def reconnects(self, inbound: Inbound[Any]) -> int:
        """How many times the consumer had to connect again (a closed channel counts)."""
        ...


async def take(inbound: Inbound[Any], count: int, *, timeout: float = 30) -> list[Delivery]:
    """Take deliveries until there are `count`, within `timeout`."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"{len(got)} of {count} deliveries in {timeout}s"
        got.extend(await inbound.take(count - len(got), 0.2))
    return got


async def take_until(inbound: Inbound[Any], sentinel: bytes) -> list[bytes]:
    """Bodies taken (and acked) up to and including `sentinel`: whatever came back before it."""
    bodies: list[bytes] = []
    while sentinel not in bodies:
        batch = await take(inbound, 1)
        bodies.extend(d.body for d in batch)
        await inbound.ack(batch)
    return bodies


async def publish(outbound: Outbound, *bodies: bytes) -> None:
    await outbound.publish([Outgoing(KEY, body) for body in bodies], timeout=10)


def _bodies(n: int) -> list[bytes]:
    tag = uuid.uuid4().hex[:8]
    return [f"{tag}-{i}".encode() for i in range(n)]


class MessagingContract:
    """What every adapter pair must do; subclasses provide the `harness` fixture."""

    async def test_published_messages_are_delivered_and_an_ack_is_final(
        self, harness: Harness
    ) -> None:
        bodies = _bodies(5)
        inbound = await harness.consumer()
        await publish(harness.outbound, *bodies)
        got = await take(inbound, 5)
        assert [d.body for d in got] == bodies
        await inbound.ack(got)
        await harness.close_consumer(inbound)
        again = await harness.consumer()
        (sentinel,) = _bodies(1)
        await publish(harness.outbound, sentinel)
        assert await take_until(again, sentinel) == [sentinel], "an acked message came back"
        await harness.close_consumer(again)

    async def test_unacked_deliveries_are_redelivered_to_a_new_consumer(
        self, harness: Harness
    ) -> None:
        bodies = _bodies(3)
        first = await harness.consumer()
        await publish(harness.outbound, *bodies)
        assert [d.body for d in await take(first, 3)] == bodies
        await harness.close_consumer(first)  # without an ack: as if it crashed
        second = await harness.consumer()
        assert [d.body for d in await take(second, 3)] == bodies
        await harness.close_consumer(second)

    async def test_a_dead_letter_lands_on_the_dlq_with_its_reason(self, harness: Harness) -> None:
        poison, good = _bodies(2)
        inbound = await harness.consumer()
        await publish(harness.outbound, poison, good)
        got = await take(inbound, 2)
        await inbound.dead_letter(got[0], "invalid order command: not json")
        await inbound.ack(got[1:])
        assert await harness.dead_letters(1) == [(poison, "invalid order command: not json")]
        await harness.close_consumer(inbound)
        again = await harness.consumer()
        (sentinel,) = _bodies(1)
        await publish(harness.outbound, sentinel)
        assert await take_until(again, sentinel) == [sentinel], "a settled message came back"
        await harness.close_consumer(again)

    async def test_each_delivery_is_settled_once_when_the_newest_is_dead_lettered(
        self, harness: Harness
    ) -> None:
        bodies = _bodies(4)
        inbound = await harness.consumer()
        await publish(harness.outbound, *bodies)
        got = await take(inbound, 4)
        assert [d.body for d in got] == bodies
        await inbound.dead_letter(got[-1], "refused")
        await inbound.ack(got[:-1])
        await inbound.ack(got)  # settled already: an adapter never acks a delivery twice
        # A second ack of the dead letter would close a RabbitMQ channel: the consumer would
        # then get everything again before the sentinel.
        (sentinel,) = _bodies(1)
        await publish(harness.outbound, sentinel)
        assert await take_until(inbound, sentinel) == [sentinel]
        assert harness.reconnects(inbound) == 0, "the consumer's channel was closed"
        await harness.close_consumer(inbound)
        again = await harness.consumer()
        (sentinel,) = _bodies(1)
        await publish(harness.outbound, sentinel)
        assert await take_until(again, sentinel) == [sentinel]
        await harness.close_consumer(again)
        assert await harness.dead_letters(1) == [(bodies[-1], "refused")]

    @pytest.mark.disruptive
    async def test_publishing_and_consuming_resume_after_a_broker_restart(
        self, harness: Harness
    ) -> None:
        before, after = _bodies(2)
        inbound = await harness.consumer()
        await publish(harness.outbound, before)
        await inbound.ack(await take(inbound, 1))
        await harness.restart_broker()

        async def published() -> bool:
            await publish(harness.outbound, after)
            return True

        await eventually(published, timeout=90, interval=1.0, what="publishing again")
        bodies = await take_until(inbound, after)
        assert set(bodies) == {after}, bodies
        await harness.close_consumer(inbound)


# --- Kafka ----------------------------------------------------------------------------------


class KafkaHarness:
    def __init__(self, settings: StackSettings) -> None:
        name = f"test-{RUN}-msg-{uuid.uuid4().hex[:8]}"
        self.settings = settings
        self.topic, self.dlq, self.group = name, f"{name}.dlq", f"{name}-group"
        self.publisher = KafkaPublisher(settings.kafka.brokers, delivery_timeout=10)
        self.outbound = self.publisher.topic(self.topic)

    async def consumer(self) -> KafkaInbound:
        # No wait for the partitions: with no committed offset the group starts at the earliest
        # one, so what is published before the first rebalance is delivered too.
        return KafkaInbound(
            self.settings.kafka.brokers,
            topic=self.topic,
            group=self.group,
            dlq=self.publisher.topic(self.dlq),
        )

    def reconnects(self, inbound: Inbound[Any]) -> int:
        return 0  # librdkafka reconnects below the port; no channel state is lost with it

    async def close_consumer(self, inbound: Inbound[Any]) -> None:
        assert isinstance(inbound, KafkaInbound)
        await inbound.close()

    async def dead_letters(self, count: int) -> list[tuple[bytes, str]]:
        return await asyncio.to_thread(self._read_dlq, count)

    def _read_dlq(self, count: int) -> list[tuple[bytes, str]]:
        reader = Consumer(
            {
                "bootstrap.servers": self.settings.kafka.brokers,
                "group.id": f"{self.group}-dlq-reader",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        found: list[tuple[bytes, str]] = []
        try:
            reader.subscribe([self.dlq])
            deadline = time.monotonic() + 30
            while len(found) < count and time.monotonic() < deadline:
                msg = reader.poll(0.2)
                if msg is None or msg.error():
                    continue
                raw = msg.headers() or []
                pairs = raw.items() if isinstance(raw, dict) else raw
                headers = {k: v for k, v in pairs if isinstance(v, bytes)}
                assert headers["source"].decode().startswith(f"{self.topic}:")
                found.append((msg.value() or b"", headers["reason"].decode()))
        finally:
            reader.close()
        return found

    async def restart_broker(self) -> None:
        await asyncio.to_thread(stack.stop, "kafka", STACK)
        await asyncio.to_thread(stack.start, "kafka", STACK)

    async def close(self) -> None:
        await self.publisher.close()
        admin = AdminClient({"bootstrap.servers": self.settings.kafka.brokers})
        futures = admin.delete_topics([self.topic, self.dlq], operation_timeout=10)
        for fut in futures.values():
            await asyncio.to_thread(fut.result, 15)


class TestKafka(MessagingContract):
    @pytest.fixture
    async def harness(self, settings: StackSettings) -> AsyncIterator[KafkaHarness]:
        harness = KafkaHarness(settings)
        await ensure_topics(settings.kafka.brokers, [harness.topic, harness.dlq])
        yield harness
        await harness.close()


# --- RabbitMQ -------------------------------------------------------------------------------


class RabbitHarness:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.queue = f"test-{RUN}-msg-{uuid.uuid4().hex[:8]}"
        self.publisher = RabbitPublisher(settings.rabbitmq.url, queue=self.queue, timeout=5)
        self.outbound = self.publisher.to_queue()
        self.stopping = asyncio.Event()
        self._tasks: dict[int, tuple[asyncio.Event, asyncio.Task[None]]] = {}

    async def connect(self) -> None:
        await asyncio.wait_for(self.publisher.connect_forever(self.stopping), 30)

    async def consumer(self) -> RabbitInbound:
        inbound = RabbitInbound(
            self.settings.rabbitmq.url,
            queue=self.queue,
            prefetch=100,
            timeout=5,
            dlq=self.publisher.to_dead_letters(),
        )
        stopping = asyncio.Event()
        task = asyncio.create_task(inbound.consume_forever(stopping))
        self._tasks[id(inbound)] = (stopping, task)
        await asyncio.wait_for(inbound.consuming.wait(), 30)
        return inbound

    def reconnects(self, inbound: Inbound[Any]) -> int:
        assert isinstance(inbound, RabbitInbound)
        return inbound.connections - 1

    async def close_consumer(self, inbound: Inbound[Any]) -> None:
        assert isinstance(inbound, RabbitInbound)
        stopping, task = self._tasks.pop(id(inbound))
        stopping.set()
        await asyncio.wait_for(task, 10)
        await inbound.close()

    async def dead_letters(self, count: int) -> list[tuple[bytes, str]]:
        connection = await aio_pika.connect(self.settings.rabbitmq.url, timeout=10)
        found: list[tuple[bytes, str]] = []
        async with connection:
            channel = await connection.channel()
            dlq = await channel.declare_queue(f"{self.queue}.dlq", durable=True)

            async def one() -> bool:
                message = await dlq.get(no_ack=True, fail=False, timeout=5)
                if message is not None:
                    found.append((message.body, str((message.headers or {})["x-reason"])))
                return len(found) >= count

            await eventually(one, timeout=30, interval=0.1, what="dead letters")
        return found

    async def delete_queue(self) -> None:
        """As an operator would, through the management API."""
        s = self.settings
        url = f"http://{s.rabbitmq.host}:{s.stack.management_port}/api/queues/%2F/{self.queue}"
        async with httpx.AsyncClient(auth=(s.stack.admin_user, s.stack.admin_password)) as client:
            response = await client.delete(url, timeout=10)
        assert response.status_code == 204, response.text

    async def restart_broker(self) -> None:
        await asyncio.to_thread(stack.stop, "rabbitmq", STACK)
        await asyncio.to_thread(stack.start, "rabbitmq", STACK)

    async def close(self) -> None:
        for stopping, task in self._tasks.values():
            stopping.set()
            await asyncio.wait_for(task, 10)
        self.stopping.set()
        await self.publisher.close()
        connection = await aio_pika.connect(self.settings.rabbitmq.url, timeout=10)
        async with connection:
            channel = await connection.channel()
            for name in (self.queue, f"{self.queue}.dlq"):
                await channel.queue_delete(name)
            await channel.exchange_delete(f"{self.queue}.dlx")


class TestRabbitMQ(MessagingContract):
    @pytest.fixture
    async def harness(self, settings: StackSettings) -> AsyncIterator[RabbitHarness]:
        harness = RabbitHarness(settings)
        await harness.connect()
        yield harness
        await harness.close()

    async def test_a_consumer_cancelled_by_the_broker_consumes_again(
        self, harness: RabbitHarness
    ) -> None:
        inbound = await harness.consumer()
        assert isinstance(inbound, RabbitInbound)
        await harness.delete_queue()  # the broker cancels every consumer of the queue

        async def consuming_again() -> bool:
            return inbound.subscriptions >= 2 and inbound.consuming.is_set()

        await eventually(consuming_again, timeout=30, what="consuming again after the cancel")
        (body,) = _bodies(1)
        await publish(harness.outbound, body)
        assert await take_until(inbound, body) == [body]
        await harness.close_consumer(inbound)
