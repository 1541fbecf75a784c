"""One contract for the messaging adapters, run against real Kafka and real RabbitMQ.

`MessagingContract` holds the tests, the broker's lifecycle (start, close, a restart) among
them; `TestKafka` and `TestRabbitMQ` only say how to make a broker and a dead-letter reader on a
topic or queue of the test's own (RabbitMQ: in a vhost of its own, provisioned as `make up`
provisions its own), as FastStream's per-broker test classes do. Names start `test-<run>-`:
the session deletes what a failed test leaves behind.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Protocol
from urllib.parse import quote

import aio_pika
import httpx
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY

import devstack as stack
from devstack import kafka as stack_kafka
from devstack import rabbitmq
from devstack.settings import StackSettings
from shop.messaging.kafka import (
    KafkaBroker,
    KafkaInbound,
    KafkaPublisher,
    client_config,
    ensure_topics,
)
from shop.messaging.ports import Broker, Delivery, Inbound, Outbound, Outgoing
from shop.messaging.rabbitmq import RabbitBroker, RabbitInbound
from tests.conftest import RUN, STACK
from tests.support import eventually

pytestmark = pytest.mark.integration

KEY = "k"  # one key: on Kafka every message of a test shares one partition, so order holds


class Harness(Protocol):
    """How one broker's adapters are made for a test."""

    broker: Broker  # on the test's topic/queue, started
    outbound: Outbound  # its publisher

    def new_broker(self) -> Broker:
        """Another broker on the test's topic/queue, not started."""
        ...

    async def consumer(self, broker: Broker | None = None) -> Inbound[Any]:
        """A new consumer of `broker` (the harness's) on the test's topic/queue, ready to take."""
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

    async def test_a_started_broker_passes_its_check_and_carries_messages(
        self, harness: Harness
    ) -> None:
        broker = harness.new_broker()
        broker.start()
        await eventually(partial(_passes, broker), timeout=30, what="the broker's check")
        await _carries_a_message(harness, broker)
        await broker.close()

    async def test_close_is_idempotent_and_leaves_no_task_or_thread_running(
        self, harness: Harness
    ) -> None:
        tasks, threads = asyncio.all_tasks(), set(threading.enumerate())
        never_started = harness.new_broker()
        await never_started.close()
        broker = harness.new_broker()
        broker.start()
        await _carries_a_message(harness, broker)
        await broker.close()
        await broker.close()

        async def no_task_left() -> bool:  # the client's own clean-up may take a moment
            return not asyncio.all_tasks() - tasks

        await eventually(no_task_left, timeout=5, what="no task left after close")
        # asyncio.to_thread's pool keeps its threads for the next call: not the broker's
        left = [t for t in set(threading.enumerate()) - threads if "asyncio" not in t.name]
        assert left == []
        assert not await _passes(broker), "a closed broker still passes its check"

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
        # At least once: `before` may come again if the restart beat its ack's offset commit
        # (Kafka commits stored offsets every second); nothing else may.
        assert set(bodies) <= {before, after}, bodies
        await eventually(partial(_passes, harness.broker), timeout=30, what="the check again")
        await harness.close_consumer(inbound)


async def _passes(broker: Broker) -> bool:
    try:
        await broker.check(timeout=5)
    except Exception:
        return False
    return True


async def _carries_a_message(harness: Harness, broker: Broker) -> None:
    """A consumer of `broker` gets what its publisher published (once it could publish)."""
    inbound = await harness.consumer(broker)
    (body,) = _bodies(1)
    await eventually(partial(_published, broker.publisher(), body), timeout=30, what="publishing")
    assert await take_until(inbound, body) == [body]


async def _published(outbound: Outbound, body: bytes) -> bool:
    await publish(outbound, body)
    return True


# --- Kafka ----------------------------------------------------------------------------------


class KafkaHarness:
    """The order service's adapters as its principal, on the test's topic, dead-letter topic
    and group (the principal's ACLs on them made here, taken away at `close`)."""

    def __init__(self, settings: StackSettings) -> None:
        name = f"test-{RUN}-msg-{uuid.uuid4().hex[:8]}"
        self.topic, self.dlq, self.group = name, f"{name}.dlq", f"{name}-group"
        self.settings = settings.replace(
            kafka_topic=self.topic, kafka_dlq_topic=self.dlq, kafka_consumer_group=self.group
        )
        stack_kafka.provision(self.settings)
        self.dead_letter_publisher = KafkaPublisher(self.settings.kafka, delivery_timeout=10)
        self.broker = self.new_broker()
        self.broker.start()
        self.outbound = self.broker.publisher()

    def new_broker(self) -> KafkaBroker:
        return KafkaBroker(
            self.settings.kafka,
            dead_letters=self.dead_letter_publisher.topic(self.dlq),
            deadline=10,
        )

    async def consumer(self, broker: Broker | None = None) -> Inbound[Any]:
        # No wait for the partitions: with no committed offset the group starts at the earliest
        # one, so what is published before the first rebalance is delivered too.
        return (broker or self.broker).consumer(100)

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
                **client_config(stack_kafka.as_admin(self.settings)),
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
        await self.broker.close()
        await self.dead_letter_publisher.close()
        await asyncio.to_thread(stack_kafka.revoke, self.settings, self.topic)
        admin = AdminClient(client_config(stack_kafka.as_admin(self.settings)))
        futures = admin.delete_topics([self.topic, self.dlq], operation_timeout=10)
        for fut in futures.values():
            await asyncio.to_thread(fut.result, 15)


class TestKafka(MessagingContract):
    @pytest.fixture
    async def harness(self, settings: StackSettings) -> AsyncIterator[KafkaHarness]:
        harness = KafkaHarness(settings)
        await ensure_topics(harness.settings.kafka, [harness.topic, harness.dlq])
        yield harness
        await harness.close()

    async def test_the_lag_gauge_shows_each_partition_the_member_holds(
        self, harness: KafkaHarness
    ) -> None:
        """`kafka_consumer_lag{topic,partition}` (deploy/prometheus/rules.yml): what `depth`
        sums, per partition."""
        inbound = await harness.consumer()
        await publish(harness.outbound, *_bodies(5))  # one key: one partition
        taken = await take(inbound, 2)

        async def three_behind() -> bool:
            shown = _lags_shown(harness.topic)
            depth = await inbound.depth()
            return depth == 3 and sum(shown.values()) == 3 and max(shown.values()) == 3

        await eventually(three_behind, timeout=20, what="a lag of 3 on one partition")
        await inbound.ack(taken)
        await harness.close_consumer(inbound)

    async def test_a_member_that_resumes_a_caught_up_group_counts_lag_from_its_commit(
        self, harness: KafkaHarness
    ) -> None:
        """A partition the member has consumed nothing from yet has no position: its lag counts
        from the group's committed offset, not from the start of the topic."""
        first = await harness.consumer()
        await publish(harness.outbound, *_bodies(5))  # one key: one partition
        await first.ack(await take(first, 5))
        await harness.close_consumer(first)  # commits what it stored
        second = await harness.consumer()

        async def assigned() -> bool:
            # (polling, as the consumer loop does, is what joins the group and gets partitions)
            assert await second.take(10, 0.2) == [], "an acked message came back"
            await second.depth()
            return bool(_lags_shown(harness.topic))  # set once it holds partitions

        await eventually(assigned, timeout=30, what="partitions assigned")
        # One more record, fetched but not taken: 1 behind the commit (5 behind that 6 before).
        await publish(harness.outbound, *_bodies(1))

        async def one_behind() -> bool:
            depth, shown = await second.depth(), _lags_shown(harness.topic).values()
            return depth == 1 and sum(shown) == 1

        await eventually(one_behind, timeout=30, what="a lag of 1, counted from the commit")
        await harness.close_consumer(second)


def _lags_shown(topic: str) -> dict[str, float]:
    """`kafka_consumer_lag` of `topic`, per partition, as this process shows it."""
    return {
        sample.labels["partition"]: sample.value
        for metric in REGISTRY.collect()
        if metric.name == "kafka_consumer_lag"
        for sample in metric.samples
        if sample.labels["topic"] == topic
    }


# --- RabbitMQ -------------------------------------------------------------------------------


def _counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class RabbitHarness:
    """A broker as the order service's (intake's account publishes, the consumer's consumes
    and dead-letters) on a queue in a vhost of the test's own."""

    def __init__(self, settings: StackSettings) -> None:
        self.queue = name = f"test-{RUN}-msg-{uuid.uuid4().hex[:8]}"
        self.settings = settings.replace(rabbitmq_vhost=name, rabbitmq_queue=name)
        rabbitmq.provision(self.settings)  # blocking, briefly: a few management API calls
        self.broker = self.new_broker()
        self.broker.start()
        self.outbound = self.broker.publisher()
        self._connections: dict[int, float] = {}  # consumer connections counted at its start
        self.subscriptions: dict[int, float] = {}  # and subscriptions

    def new_broker(self) -> RabbitBroker:
        return RabbitBroker(self.settings.rabbitmq, timeout=5)

    async def connect(self) -> None:
        await eventually(partial(_passes, self.broker), timeout=30, what="publisher connected")

    async def consumer(self, broker: Broker | None = None) -> Inbound[Any]:
        inbound = (broker or self.broker).consumer(100)
        assert isinstance(inbound, RabbitInbound)
        await asyncio.wait_for(inbound.consuming.wait(), 30)
        self._connections[id(inbound)] = _counted("rabbitmq_connections_total", role="consumer")
        self.subscriptions[id(inbound)] = _counted("rabbitmq_consumer_subscriptions_total")
        return inbound

    def reconnects(self, inbound: Inbound[Any]) -> int:
        now = _counted("rabbitmq_connections_total", role="consumer")
        return int(now - self._connections[id(inbound)])

    async def close_consumer(self, inbound: Inbound[Any]) -> None:
        assert isinstance(inbound, RabbitInbound)
        await inbound.close()

    async def dead_letters(self, count: int) -> list[tuple[bytes, str]]:
        # As the administrator: no service account may read the dead-letter queue.
        connection = await aio_pika.connect(rabbitmq.admin_url(self.settings), timeout=10)
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
        vhost, queue = (quote(name, safe="") for name in (s.rabbitmq.vhost, self.queue))
        url = f"http://{s.rabbitmq.host}:{s.stack.management_port}/api/queues/{vhost}/{queue}"
        async with httpx.AsyncClient(auth=(s.stack.admin_user, s.stack.admin_password)) as client:
            response = await client.delete(url, timeout=10)
        assert response.status_code == 204, response.text

    async def close_connections(self, count: int) -> None:
        """Have the broker close this process's `count` connections, as a node going away
        does (once the management API lists them: its statistics lag a few seconds)."""
        s = self.settings
        api = f"http://{s.rabbitmq.host}:{s.stack.management_port}/api/connections"
        mine = f"pid {os.getpid()}"
        auth = (s.stack.admin_user, s.stack.admin_password)
        async with httpx.AsyncClient(auth=auth, timeout=10) as client:

            async def listed() -> list[str] | None:
                names = [
                    c["name"]
                    for c in (await client.get(api)).json()
                    if str(c.get("client_properties", {}).get("connection_name")).endswith(mine)
                ]
                return names if len(names) == count else None

            for name in await eventually(listed, timeout=30, what=f"{count} connections listed"):
                response = await client.delete(f"{api}/{quote(name, safe='')}")
                assert response.status_code == 204, response.text

    async def restart_broker(self) -> None:
        await asyncio.to_thread(stack.stop, "rabbitmq", STACK)
        await asyncio.to_thread(stack.start, "rabbitmq", STACK)

    async def close(self) -> None:
        await self.broker.close()
        await asyncio.to_thread(rabbitmq.remove_vhost, self.settings)


class TestRabbitMQ(MessagingContract):
    @pytest.fixture
    async def harness(
        self, settings: StackSettings, rabbitmq_cleanup: None
    ) -> AsyncIterator[RabbitHarness]:
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
            again = _counted("rabbitmq_consumer_subscriptions_total")
            return again > harness.subscriptions[id(inbound)] and inbound.consuming.is_set()

        await eventually(consuming_again, timeout=30, what="consuming again after the cancel")
        (body,) = _bodies(1)
        await publish(harness.outbound, body)
        assert await take_until(inbound, body) == [body]
        await harness.close_consumer(inbound)

    async def test_connections_the_broker_closes_are_made_again(
        self, harness: RabbitHarness
    ) -> None:
        inbound = await harness.consumer()
        await harness.close_connections(3)  # the publisher's, the dead letters' and the consumer's

        async def reconnected() -> bool:
            return harness.reconnects(inbound) == 1 and await _passes(harness.broker)

        await eventually(reconnected, timeout=30, what="both connections made again")
        (body,) = _bodies(1)
        await eventually(partial(_published, harness.outbound, body), timeout=30, what="publish")
        assert await take_until(inbound, body) == [body]
        await harness.close_consumer(inbound)
