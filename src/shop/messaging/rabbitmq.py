"""The RabbitMQ adapter of the ports, on aiormq: confirmed publishing, batched consumption.

One client stack, aiormq (the AMQP layer under aio-pika): aio-pika's consumer wraps each delivery
in a message object and hands it over through a task of its own, and its publisher builds and
validates a `Message` per publish; measured with `bench/amqp_stacks.py`, see docs/messaging.md.

Topology for queue Q: durable queue Q whose dead letters go through the direct exchange `Q.dlx`
to the durable queue `Q.dlq` (with the reason in the `x-reason` header). Every connection
declares it when it opens (`_open`).

Publishing and consuming use separate connections: a memory or disk alarm blocks every
publishing connection, and must not hold back the consumer's acks (which free the queue).
The service starts and serves its other paths while RabbitMQ is down: each connection is kept
by a task that connects, serves until the connection closes, and starts over (`_reconnecting`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic
from prometheus_client import Counter
from tenacity import AsyncRetrying, RetryError, before_sleep_log, wait_exponential

from shop.messaging.ports import Outgoing, PublishError
from shop.settings import RabbitMQ
from shop.supervision import Supervisor, first_of, pause, retrieve

log = logging.getLogger(__name__)

CONNECTIONS = Counter("rabbitmq_connections_total", "Connections opened to RabbitMQ", ["role"])
SUBSCRIPTIONS = Counter(
    "rabbitmq_consumer_subscriptions_total", "Times a consumer started consuming its queue"
)
# The publishing channel's: the broker confirms each message, and returns one it cannot route.
_CONFIRMING = {"publisher_confirms": True, "on_return_raises": True}


class Topology:
    """The names of queue Q, its dead-letter exchange and queue, and both queues' arguments.

    Quorum queues (a cluster) are replicated and count deliveries: a message delivered more
    than `delivery_limit` times (a consumer that keeps dying on it) is dead-lettered, not
    redelivered forever. A queue's type is fixed when it is first declared.
    """

    def __init__(self, settings: RabbitMQ) -> None:
        self.queue = queue = settings.queue
        self.dlx = f"{queue}.dlx"
        self.dlq = f"{queue}.dlq"
        kind: dict[str, Any] = (
            {"x-queue-type": "quorum", "x-delivery-limit": settings.delivery_limit}
            if settings.queue_type == "quorum"
            else {}
        )
        dead_letters = {"x-dead-letter-exchange": self.dlx, "x-dead-letter-routing-key": self.dlq}
        self.dlq_arguments: dict[str, Any] = dict(kind)
        self.arguments: dict[str, Any] = {**kind, **dead_letters}

    async def declare(self, channel: AbstractChannel, timeout: float) -> int:
        """Declare the exchange and both queues; the number of messages ready in Q."""
        declare_queue = partial(channel.queue_declare, durable=True, timeout=timeout)
        await channel.exchange_declare(self.dlx, durable=True, timeout=timeout)  # direct
        await declare_queue(self.dlq, arguments=self.dlq_arguments)
        await channel.queue_bind(self.dlq, self.dlx, routing_key=self.dlq, timeout=timeout)
        declared = await declare_queue(self.queue, arguments=self.arguments)
        return int(declared.message_count or 0)


async def _reconnecting(
    stopping: asyncio.Event, serve: Callable[[asyncio.Event], Awaitable[None]], settings: RabbitMQ
) -> None:
    """Run `serve` (connect, then serve until the connection is lost) again after each failure,
    with backoff, until `stopping` is set: the adapter's one reconnect loop."""
    # tenacity logs "Retrying <unknown> in 0.5 seconds as it raised ...": the logger's name
    # (shop.messaging.rabbitmq._publish_on or ._consume) says which connection it is
    which = log.getChild(getattr(serve, "__name__", "connection"))
    retrying = AsyncRetrying(
        wait=wait_exponential(
            multiplier=settings.reconnect_first_seconds, max=settings.reconnect_max_seconds
        ),
        stop=lambda _state: stopping.is_set(),
        sleep=partial(pause, stopping),
        before_sleep=before_sleep_log(which, logging.WARNING),
    )
    with contextlib.suppress(RetryError):  # stopping after a failure
        async for attempt in retrying:
            if stopping.is_set():  # set during the pause: no attempt after it
                return
            with attempt:
                await serve(stopping)


class RabbitBroker:
    """The order commands on RabbitMQ: the `Broker` port over a publishing connection with one
    confirming channel, and a connection of its own per consumer."""

    name = "rabbitmq"

    def __init__(self, settings: RabbitMQ, *, timeout: float) -> None:
        self._settings = settings
        self.topology = Topology(settings)
        self._timeout = timeout
        self._channel: AbstractChannel | None = None  # the publishing channel
        self._renew_after = 0.0  # loop time before which a nack renews no channel
        self._inbound: list[RabbitInbound] = []
        self._tasks = Supervisor()

    def start(self) -> None:
        serve = partial(_reconnecting, serve=self._publish_on, settings=self._settings)
        self._tasks.start("rabbitmq-publisher", serve)

    def publisher(self) -> RabbitBroker:
        """The outbound port to the queue (through the default exchange): the broker itself."""
        return self

    def consumer(self, batch_size: int) -> RabbitInbound:
        """A consumer with `batch_size` deliveries in flight, on a connection of its own."""
        inbound = RabbitInbound(self, prefetch=batch_size)
        self._inbound.append(inbound)
        inbound.start()
        return inbound

    async def _open(self, role: str, **channel_options: Any) -> AbstractChannel:
        """A new connection, a channel on it and the topology declared."""
        async with asyncio.timeout(self._timeout):
            connection = await aiormq.connect(
                # which process holds it, as the management UI and rabbitmqctl show it
                self._settings.url,
                client_properties={"connection_name": f"shop-{role} pid {os.getpid()}"},
            )
        try:
            channel = await self._open_channel(connection, **channel_options)
        except BaseException:
            await _close(connection, self._settings.close_seconds)
            raise
        CONNECTIONS.labels(role).inc()
        return channel

    async def _open_channel(
        self, connection: aiormq.abc.AbstractConnection, **channel_options: Any
    ) -> AbstractChannel:
        async with asyncio.timeout(self._timeout):
            channel = await connection.channel(**channel_options)
            await self.topology.declare(channel, self._timeout)
        return channel

    async def _publish_on(self, stopping: asyncio.Event) -> None:
        """Connect, then publish on that connection until it is lost (raises) or `stopping`."""
        channel = await self._open("publisher", **_CONFIRMING)
        self._channel = channel
        log.info("rabbitmq publisher connected; queue %s ready", self.topology.queue)
        await first_of(stopping, _closed(channel.connection.closing))
        if not stopping.is_set():
            self._channel = None
            raise ConnectionError("publishing connection lost")

    async def _renew_channel(self) -> None:
        """Publish on a new channel from now on (after a nack), at most once per
        RABBITMQ_RENEW_CHANNEL_SECONDS.

        A channel that first published to a quorum queue while its leader's node was being lost
        (a reconnect lands within milliseconds, before the election) keeps addressing that
        leader and gets every publish nacked until the node returns (seen in the fault drill on
        RabbitMQ 3.10: 12 s of 503s). A new channel finds the queue's current leader. Runs in
        the request whose publish was nacked, bounded by the publish deadline; meanwhile other
        requests keep publishing on the old channel.
        """
        loop = asyncio.get_running_loop()
        old = self._channel
        if old is None or loop.time() < self._renew_after:
            return
        self._renew_after = math.inf  # while this renewal runs, no other starts
        try:
            self._channel = await self._open_channel(old.connection, **_CONFIRMING)
            log.warning("RabbitMQ refused a publish: publishing on a new channel from now on")
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout):
                    await old.close()
        except Exception as exc:  # no new channel now: a later refusal tries again
            log.warning("could not open a new RabbitMQ channel: %r", exc)
        finally:
            self._renew_after = loop.time() + self._settings.renew_channel_seconds

    async def publish(
        self, messages: Sequence[Outgoing], *, timeout: float, dead_letters: bool = False
    ) -> None:
        """Publish persistent messages (mandatory) to the queue, or with `dead_letters` to its
        dead-letter queue, and wait for every confirm, or raise."""
        t = self.topology  # Q through the default exchange, or Q.dlq through Q.dlx
        exchange, routing_key = (t.dlx, t.dlq) if dead_letters else ("", t.queue)
        channel = self._channel
        if channel is None:
            raise PublishError("not connected to RabbitMQ")
        if channel.is_closed:  # closed by the broker (the connection is still there)
            await self._renew_channel()
            raise PublishError("RabbitMQ channel closed")
        try:
            async with asyncio.timeout(timeout):
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

    async def check(self, timeout: float = 0.0) -> None:
        """Raise unless the publishing connection and channel are open."""
        channel = self._channel
        if channel is None or channel.is_closed or channel.connection.is_closed:
            raise ConnectionError("not connected to RabbitMQ")

    async def close(self) -> None:
        """Close the consumers (what they did not ack goes back to the queue), then publishing."""
        for inbound in self._inbound:
            await inbound.close()
        await self._tasks.stop(timeout=self._settings.close_seconds)
        channel, self._channel = self._channel, None
        if channel is not None:
            await _close(channel.connection, self._settings.close_seconds)


def _closed(closing: asyncio.Future[Any]) -> asyncio.Event:
    """Set once `closing` (aiormq's observer of a channel or connection closing) is done."""
    closed = asyncio.Event()

    def done(future: asyncio.Future[Any]) -> None:
        retrieve(future)  # a close with an error is what we wait for
        closed.set()

    closing.add_done_callback(done)
    return closed


async def _close(connection: aiormq.abc.AbstractConnection, timeout: float) -> None:
    if connection.is_closed:
        return
    try:
        async with asyncio.timeout(timeout):
            await connection.close()
    except Exception as exc:
        log.debug("rabbitmq: closing a connection: %r", exc)


async def _publish(
    channel: AbstractChannel, message: Outgoing, exchange: str, routing_key: str
) -> None:
    properties = Basic.Properties(
        message_id=message.key,
        content_type="application/json",
        delivery_mode=2,  # persistent
        headers=dict(message.headers) if message.headers else None,
    )
    await channel.basic_publish(
        message.body,
        exchange=exchange,
        routing_key=routing_key,
        properties=properties,
        mandatory=True,
    )


class RabbitInbound:
    """The inbound port on the queue, on a connection of its own.

    Deliveries go straight into one inbox: no message object, no task per delivery. A task
    connects, declares the topology and consumes; it does all of that again after a
    connection loss, and declares and consumes again after a broker-sent `basic.cancel` (the
    queue was deleted, for example).

    Every delivery is acked exactly once: a batch is acked with one `multiple` frame only when
    no other unsettled delivery of the channel is older than its newest (a dead-lettered one
    was acked on its own, and must not be acked again: RabbitMQ closes the channel on an
    unknown delivery tag); otherwise one frame per delivery.
    """

    def __init__(self, broker: RabbitBroker, *, prefetch: int) -> None:
        self._broker = broker
        self.topology = broker.topology
        self._prefetch = prefetch
        self._timeout = broker._timeout
        self._channel: AbstractChannel | None = None
        self._unsettled: set[int] = set()  # delivery tags on `_channel` not acked yet
        self.inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
        self.consuming = asyncio.Event()
        self._tasks = Supervisor()

    def start(self) -> None:
        serve = partial(_reconnecting, serve=self._consume, settings=self._broker._settings)
        self._tasks.start("rabbitmq-consumer", serve)

    async def _consume(self, stopping: asyncio.Event) -> None:
        """Connect, then consume until the connection is lost (raises) or `stopping`."""
        channel = await self._broker._open("consumer", publisher_confirms=False)
        try:
            await channel.basic_qos(prefetch_count=self._prefetch, timeout=self._timeout)
            cancelled, closed = asyncio.Event(), _closed(channel.closing)
            channel.on_consumer_cancel_callbacks.add(lambda _frame: cancelled.set())
            while not stopping.is_set():
                if cancelled.is_set():
                    log.warning("rabbitmq consumer: cancelled by the broker; consuming again")
                    cancelled.clear()
                    await self.topology.declare(channel, self._timeout)
                self._channel, self._unsettled = channel, set()
                await channel.basic_consume(
                    self.topology.queue, self._deliver, no_ack=False, timeout=self._timeout
                )
                SUBSCRIPTIONS.inc()
                self.consuming.set()
                log.info("rabbitmq consumer: consuming %s", self.topology.queue)
                await first_of(stopping, cancelled, closed)
                self.consuming.clear()
                if channel.is_closed:
                    raise ConnectionError("consumer channel closed")
        except BaseException:
            self.consuming.clear()
            self._channel = None
            await _close(channel.connection, self._broker._settings.close_seconds)
            raise
        # The connection stays open until close(): the consumer loop still acks its batch.

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
        dead = Outgoing(message_id, delivery.body, {"x-reason": reason})
        await self._broker.publish([dead], timeout=self._timeout, dead_letters=True)
        # If its channel closed meanwhile, there is nothing to ack: it comes again, and goes to
        # the DLQ again.
        await self.ack([delivery])

    async def depth(self) -> int:
        """Messages ready in the queue (not counting those delivered and unacked)."""
        channel = self._channel
        if channel is None or channel.is_closed:
            return 0
        return await self.topology.declare(channel, self._timeout)

    async def close(self) -> None:
        """Stop consuming and close the connection: deliveries not acked go back to the queue."""
        await self._tasks.stop(timeout=self._broker._settings.close_seconds)
        self.consuming.clear()
        channel, self._channel = self._channel, None
        if channel is not None:
            await _close(channel.connection, self._broker._settings.close_seconds)
