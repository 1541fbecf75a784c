"""The RabbitMQ adapter of the messaging ports: confirmed publishing, batched consumption.

Topology for queue Q: durable queue Q whose dead letters go through the direct exchange `Q.dlx`
to the durable queue `Q.dlq` (with the reason in the `x-reason` header). Both sides declare it.

Publishing and consuming use separate connections: a memory or disk alarm blocks every
publishing connection, and must not hold back the consumer's acks (which free the queue).
The service starts and serves its other paths while RabbitMQ is down, so both connections are
made by supervised tasks that retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Coroutine, Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic

from shop.messaging.ports import Outbound, Outgoing, PublishError
from shop.runtime.supervision import pause

log = logging.getLogger(__name__)

PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)
RECONNECT_SECONDS = 1.0  # between attempts of a robust connection to reconnect
RENEW_SECONDS = 1.0  # at most one new publishing channel (after nacks) per this many seconds


class Topology:
    """The names of queue Q, its dead-letter exchange and queue, and both queues' arguments.

    Quorum queues (a cluster) are replicated and count deliveries: a message delivered more
    than `delivery_limit` times (a consumer that keeps dying on it) is dead-lettered, not
    redelivered forever. A queue's type is fixed when it is first declared.
    """

    def __init__(
        self, queue: str, *, queue_type: str = "classic", delivery_limit: int = 20
    ) -> None:
        self.queue = queue
        self.dlx = f"{queue}.dlx"
        self.dlq = f"{queue}.dlq"
        kind: dict[str, Any] = (
            {"x-queue-type": "quorum", "x-delivery-limit": delivery_limit}
            if queue_type == "quorum"
            else {}
        )
        self.dlq_arguments: dict[str, Any] = dict(kind)
        self.arguments: dict[str, Any] = {
            **kind,
            "x-dead-letter-exchange": self.dlx,
            "x-dead-letter-routing-key": self.dlq,
        }


class RabbitPublisher:
    """A robust connection with one confirming channel; publishes to the order queue or DLQ.

    After the first connection aio-pika's robust connection reconnects by itself and declares
    again the exchange and queues it holds references to.
    """

    def __init__(
        self,
        url: str,
        *,
        queue: str,
        timeout: float,
        queue_type: str = "classic",
        delivery_limit: int = 20,
    ) -> None:
        self._url = url
        self.topology = Topology(queue, queue_type=queue_type, delivery_limit=delivery_limit)
        self._timeout = timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._declared: list[Any] = []  # references the robust channel restores
        self._renew_after = 0.0  # loop time before which a nack renews no channel
        self.connected = asyncio.Event()

    def to_queue(self) -> RabbitDestination:
        """The outbound port to the queue (through the default exchange)."""
        return RabbitDestination(self, exchange="", routing_key=self.topology.queue)

    def to_dead_letters(self) -> RabbitDestination:
        """The outbound port to the dead-letter queue (through `Q.dlx`)."""
        return RabbitDestination(self, exchange=self.topology.dlx, routing_key=self.topology.dlq)

    async def connect_forever(self, stopping: asyncio.Event) -> None:
        """Connect (retrying with backoff until it works) and declare the topology; from then on
        the robust connection reconnects by itself."""
        delay = 0.5
        while not stopping.is_set() and self._connection is None:
            try:
                await self._connect()
            except Exception as exc:  # any failure here means "try again later"
                log.warning("rabbitmq not reachable (%s); retrying in %.1fs", exc, delay)
                await pause(stopping, delay)
                delay = min(delay * 2, 5.0)

    async def _connect(self) -> None:
        t = self.topology
        connection = await aio_pika.connect_robust(
            self._url,
            timeout=self._timeout,
            # aio-pika waits 5 s before each reconnect; a node lost behind HAProxy is replaced
            # by the next connection, so a second is enough and cuts a broker fail-over's outage
            reconnect_interval=RECONNECT_SECONDS,
            # which process holds it, as the management UI and rabbitmqctl show it
            client_properties={"connection_name": f"shop-publisher pid {os.getpid()}"},
        )
        try:
            channel, self._declared = await self._open_channel(connection)
        except BaseException:
            await connection.close()
            raise
        self._connection, self._channel = connection, channel
        self.connected.set()
        log.info("rabbitmq publisher connected; queue %s ready", t.queue)

    async def _open_channel(
        self, connection: AbstractRobustConnection
    ) -> tuple[AbstractRobustChannel, list[Any]]:
        """A confirming channel with the topology declared on it (and the declarations, which
        the robust connection declares again after a reconnect)."""
        t = self.topology
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        assert isinstance(channel, AbstractRobustChannel)
        dlx: AbstractExchange = await channel.declare_exchange(
            t.dlx, aio_pika.ExchangeType.DIRECT, durable=True
        )
        dlq = await channel.declare_queue(t.dlq, durable=True, arguments=t.dlq_arguments)
        await dlq.bind(dlx, routing_key=t.dlq)
        queue = await channel.declare_queue(t.queue, durable=True, arguments=t.arguments)
        return channel, [dlx, dlq, queue]

    async def _renew_channel(self) -> None:
        """Publish on a new channel from now on (after a nack), at most once per RENEW_SECONDS.

        A channel that first published to a quorum queue while its leader's node was being lost
        (a reconnect lands within milliseconds, before the election) keeps addressing that
        leader and gets every publish nacked until the node returns (seen in the fault drill on
        RabbitMQ 3.10: 12 s of 503s). A new channel finds the queue's current leader. Runs in
        the request whose publish was nacked, bounded by the publish deadline; meanwhile other
        requests keep publishing on the old channel.
        """
        loop = asyncio.get_running_loop()
        connection = self._connection
        if connection is None or loop.time() < self._renew_after:
            return
        self._renew_after = math.inf  # while this renewal runs, no other starts
        try:
            async with asyncio.timeout(self._timeout):
                channel, declared = await self._open_channel(connection)
            old, self._channel, self._declared = self._channel, channel, declared
            log.warning("RabbitMQ nacked a publish: publishing on a new channel from now on")
            if old is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self._timeout):
                        await old.close()
        except Exception as exc:  # no new channel now: a later nack tries again
            log.warning("could not open a new RabbitMQ channel: %r", exc)
        finally:
            self._renew_after = loop.time() + RENEW_SECONDS

    async def publish(
        self, messages: Sequence[Outgoing], *, exchange: str, routing_key: str, timeout: float
    ) -> None:
        """Publish persistent messages (mandatory) and wait for every confirm, or raise.

        Straight on the robust channel's aiormq channel, as aio-pika's `Exchange.publish` does,
        without building an aio-pika `Message` first (its validation was 5 % of a request).
        """
        if self._channel is None:
            raise PublishError("not connected to RabbitMQ")
        if self._channel.is_closed:
            raise PublishError("RabbitMQ channel closed")
        try:
            async with asyncio.timeout(timeout):
                channel = await self._channel.get_underlay_channel()
                if len(messages) == 1:
                    await _publish(channel, messages[0], exchange, routing_key)
                else:
                    await asyncio.gather(
                        *(_publish(channel, m, exchange, routing_key) for m in messages)
                    )
        except TimeoutError as exc:
            raise PublishError(f"no confirm from RabbitMQ within {timeout:.1f}s") from exc
        except Exception as exc:  # closed channel, returned (unroutable) message, nack
            if isinstance(getattr(exc, "frame", None), Basic.Nack):
                await self._renew_channel()
            raise PublishError(f"RabbitMQ refused the message: {exc!r}") from exc

    async def check(self) -> None:
        """Raise unless the publishing connection and channel are open."""
        if self._connection is None or self._connection.is_closed or self._channel is None:
            raise ConnectionError("not connected to RabbitMQ")
        if self._channel.is_closed:
            raise ConnectionError("RabbitMQ channel closed")

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


async def _publish(
    channel: AbstractChannel, message: Outgoing, exchange: str, routing_key: str
) -> None:
    properties = Basic.Properties(
        message_id=message.key,
        content_type="application/json",
        delivery_mode=PERSISTENT,
        headers=dict(message.headers) if message.headers else None,
    )
    await channel.basic_publish(
        message.body,
        exchange=exchange,
        routing_key=routing_key,
        properties=properties,
        mandatory=True,
    )


class RabbitDestination:
    """The outbound port to one queue, through an exchange, on the publishing connection."""

    def __init__(self, publisher: RabbitPublisher, *, exchange: str, routing_key: str) -> None:
        self._publisher = publisher
        self._exchange = exchange
        self._routing_key = routing_key

    def publish(self, messages: Sequence[Outgoing], *, timeout: float) -> Coroutine[Any, Any, None]:
        # The publisher's coroutine itself: no extra frame on the intake path.
        return self._publisher.publish(
            messages, exchange=self._exchange, routing_key=self._routing_key, timeout=timeout
        )


class RabbitInbound:
    """The inbound port on a queue, on a connection of its own.

    Deliveries go from aiormq (the AMQP layer under aio-pika) straight into one inbox:
    aio-pika's own consumer wraps each one in a message object and a second task, 40 % of the
    cost of receiving (9,000 against 14,000 deliveries/s, measured). `consume_forever` (a
    supervised task) connects, declares the topology and consumes; it does all of that again
    after a connection loss, and declares and consumes again after a broker-sent
    `basic.cancel` (the queue was deleted, for example).

    Every delivery is acked exactly once: a batch is acked with one `multiple` frame only when
    no other unsettled delivery of the channel is older than its newest (a dead-lettered one
    was acked on its own, and must not be acked again: RabbitMQ closes the channel on an
    unknown delivery tag); otherwise one frame per delivery.
    """

    def __init__(
        self,
        url: str,
        *,
        queue: str,
        prefetch: int,
        timeout: float,
        dlq: Outbound,
        queue_type: str = "classic",
        delivery_limit: int = 20,
    ) -> None:
        self._url = url
        self.topology = Topology(queue, queue_type=queue_type, delivery_limit=delivery_limit)
        self._prefetch = prefetch
        self._timeout = timeout
        self._dlq = dlq
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._unsettled: set[int] = set()  # delivery tags on `_channel` not acked yet
        self.inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
        self.consuming = asyncio.Event()
        self.connections = 0  # how many times the consumer connected (tests watch these)
        self.subscriptions = 0  # how many times consumption started

    async def consume_forever(self, stopping: asyncio.Event) -> None:
        """Keep a consumer on the queue until `stopping` is set."""
        delay = 0.5
        while not stopping.is_set():
            try:
                channel = await self._open()
                delay = 0.5
                await self._consume_until_closed(channel, stopping)
            except Exception as exc:  # broker down, channel closed under us: start over
                log.warning("rabbitmq consumer: %r; connecting again in %.1fs", exc, delay)
                self.consuming.clear()
                await self._drop_connection()
                await pause(stopping, delay)
                delay = min(delay * 2, 5.0)
        # The connection stays open until close(): the consumer loop still acks its batch.

    async def _open(self) -> AbstractChannel:
        await self._drop_connection()
        async with asyncio.timeout(self._timeout):
            self._connection = await aiormq.connect(
                self._url, client_properties={"connection_name": f"shop-consumer pid {os.getpid()}"}
            )
            channel = await self._connection.channel(publisher_confirms=False)
            await channel.basic_qos(prefetch_count=self._prefetch)
        self.connections += 1
        return channel

    async def _consume_until_closed(
        self, channel: AbstractChannel, stopping: asyncio.Event
    ) -> None:
        cancelled = asyncio.Event()
        channel.on_consumer_cancel_callbacks.add(lambda _frame: cancelled.set())
        while not stopping.is_set():
            cancelled.clear()
            await self._declare(channel)
            self._channel, self._unsettled = channel, set()
            await channel.basic_consume(
                self.topology.queue, self._deliver, no_ack=False, timeout=self._timeout
            )
            self.subscriptions += 1
            self.consuming.set()
            log.info("rabbitmq consumer: consuming %s", self.topology.queue)
            waits: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(e.wait()) for e in (stopping, cancelled)
            ]
            waits.append(channel.closing)  # an observer of its own: cancelling it is harmless
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
            self.consuming.clear()
            if channel.is_closed:
                raise ConnectionError("consumer channel closed")
            if cancelled.is_set():
                log.warning("rabbitmq consumer: cancelled by the broker; consuming again")

    async def _declare(self, channel: AbstractChannel) -> None:
        t, timeout = self.topology, self._timeout
        await channel.exchange_declare(t.dlx, exchange_type="direct", durable=True, timeout=timeout)
        await channel.queue_declare(t.dlq, durable=True, arguments=t.dlq_arguments, timeout=timeout)
        await channel.queue_bind(t.dlq, t.dlx, routing_key=t.dlq, timeout=timeout)
        await channel.queue_declare(t.queue, durable=True, arguments=t.arguments, timeout=timeout)

    async def _deliver(self, message: DeliveredMessage) -> None:
        self._unsettled.add(message.delivery_tag or 0)
        self.inbox.put_nowait(message)

    async def take(self, max_messages: int, timeout: float) -> list[DeliveredMessage]:
        inbox = self.inbox
        if inbox.empty():
            try:
                async with asyncio.timeout(timeout):
                    batch = [await inbox.get()]
            except TimeoutError:
                return []
        else:
            batch = [inbox.get_nowait()]
        while len(batch) < max_messages and not inbox.empty():
            batch.append(inbox.get_nowait())
        channel = self._channel
        if any(m.channel is not channel for m in batch):
            # Delivered on a channel that has since closed: the broker delivers them again.
            batch = [m for m in batch if m.channel is channel]
        return batch

    async def ack(self, deliveries: Sequence[DeliveredMessage]) -> None:
        channel = self._channel
        tags = {m.delivery_tag or 0 for m in deliveries if m.channel is channel}
        tags &= self._unsettled  # never a second ack
        if not tags or channel is None:
            return
        self._unsettled -= tags
        newest = max(tags)
        try:
            if not self._unsettled or min(self._unsettled) > newest:
                await channel.basic_ack(newest, multiple=True)
            else:
                for tag in sorted(tags):
                    await channel.basic_ack(tag)
        except Exception as exc:  # the channel died; the broker delivers them again
            log.info("rabbitmq consumer: ack failed (%r); they will be redelivered", exc)

    async def dead_letter(self, delivery: DeliveredMessage, reason: str) -> None:
        message_id = delivery.header.properties.message_id or ""
        await self._dlq.publish(
            [Outgoing(message_id, delivery.body, {"x-reason": reason})], timeout=self._timeout
        )
        channel, tag = self._channel, delivery.delivery_tag or 0
        if delivery.channel is not channel or channel is None or tag not in self._unsettled:
            return  # its channel closed: it comes again, and goes to the DLQ again
        self._unsettled.discard(tag)
        try:
            await channel.basic_ack(tag)
        except Exception as exc:
            log.info("rabbitmq consumer: ack failed (%r); it will be redelivered", exc)

    async def depth(self) -> int:
        """Messages ready in the queue (not counting those delivered and unacked)."""
        channel, t = self._channel, self.topology
        if channel is None or channel.is_closed:
            return 0
        declared = await channel.queue_declare(
            t.queue, durable=True, arguments=t.arguments, timeout=self._timeout
        )
        return int(declared.message_count or 0)

    async def _drop_connection(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            try:
                async with asyncio.timeout(self._timeout):
                    await connection.close()
            except Exception as exc:
                log.debug("rabbitmq consumer: closing the old connection: %r", exc)

    async def close(self) -> None:
        """Close the connection: deliveries not acked go back to the queue."""
        self.consuming.clear()
        await self._drop_connection()
