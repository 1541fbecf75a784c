"""The RabbitMQ adapter of the ports, on aiormq: confirmed publishing, batched consumption.

One client stack, aiormq (the AMQP layer under aio-pika): aio-pika's consumer wraps each delivery
in a message object and hands it over through a task of its own, and its publisher builds and
validates a `Message` per publish; measured with `bench/amqp_stacks.py`, see docs/messaging.md.

Topology for queue Q: intake publishes to the direct exchange `Q.exchange`, bound to the
durable queue Q (routing key Q), whose dead letters go through the direct exchange `Q.dlx` to
the durable queue `Q.dlq` (with the reason in the `x-reason` header). The consumers declare it
all when they connect (`Topology.declare`); intake only checks that its exchange is there (a
passive declare), so its account needs no right but to write to that exchange
(`Topology.permissions`).

Each role connects with its own account (`RabbitMQ.url`, `RabbitMQ.consumer_url`) and its own
connections: intake publishes on one, each consumer consumes on one, and the consumers' dead
letters go out on another. A memory or disk alarm blocks every publishing connection, and must
not hold back the consumer's acks (which free the queue). The service starts and serves its
other paths while RabbitMQ is down: each connection is kept by a task that connects, serves
until the connection closes, and starts over (`_reconnecting`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Literal, NamedTuple

import aiormq
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic
from prometheus_client import Counter
from tenacity import wait_exponential

from shop.messaging.ports import Outgoing, PublishError
from shop.settings import RabbitMQ
from shop.supervision import Supervisor, first_of, keep_trying, retrieve

log = logging.getLogger(__name__)

CONNECTIONS = Counter("rabbitmq_connections_total", "Connections opened to RabbitMQ", ["role"])
SUBSCRIPTIONS = Counter(
    "rabbitmq_consumer_subscriptions_total", "Times a consumer started consuming its queue"
)
# The publishing channels': the broker confirms each message, and returns one it cannot route.
_CONFIRMING = {"publisher_confirms": True, "on_return_raises": True}
# What RabbitMQ answers a wrong user or password (ACCESS_REFUSED at login), a user without
# access to the vhost (NOT_ALLOWED) and an operation the user's permissions do not allow
# (ACCESS_REFUSED on a channel).
_REFUSALS = (
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ConnectionNotAllowed,
    aiormq.exceptions.ChannelAccessRefused,
)

Role = Literal["intake", "consumer"]
NOTHING = "^$"  # a permission pattern no exchange or queue matches (the default one is amq.default)


class Permissions(NamedTuple):
    """An account's RabbitMQ permissions on the vhost: regular expressions (matched against
    the whole name of an exchange or queue) of what it may configure (declare, delete), write
    (publish to an exchange; bind a queue) and read (consume from a queue; bind from an
    exchange). RabbitMQ's access-control table says which operation needs which."""

    configure: str
    write: str
    read: str


def _any_of(*names: str) -> str:
    return "^(" + "|".join(re.escape(name) for name in names) + ")$" if names else NOTHING


def _union(patterns: Sequence[str]) -> str:
    wanted = [pattern for pattern in patterns if pattern != NOTHING]
    return "|".join(wanted) if wanted else NOTHING


class Topology:
    """The names of queue Q, its order exchange, its dead-letter exchange and queue, both
    queues' arguments, and what each role may do with them.

    Quorum queues (a cluster) are replicated and count deliveries: a message delivered more
    than `delivery_limit` times (a consumer that keeps dying on it) is dead-lettered, not
    redelivered forever. A queue's type is fixed when it is first declared.
    """

    def __init__(self, settings: RabbitMQ) -> None:
        self.queue = queue = settings.queue
        self.exchange = f"{queue}.exchange"  # the order exchange: what intake publishes to
        self.dlx = f"{queue}.dlx"
        self.dlq = f"{queue}.dlq"
        quorum = {"x-queue-type": "quorum", "x-delivery-limit": settings.delivery_limit}
        self.dlq_arguments: dict[str, Any] = quorum if settings.queue_type == "quorum" else {}
        dead_letters = {"x-dead-letter-exchange": self.dlx, "x-dead-letter-routing-key": self.dlq}
        self.arguments: dict[str, Any] = {**self.dlq_arguments, **dead_letters}

    async def declare(self, channel: AbstractChannel, timeout: float) -> int:
        """The consumers' declaration: both exchanges, both queues and their bindings; the
        number of messages ready in Q."""
        declare_queue = partial(channel.queue_declare, durable=True, timeout=timeout)
        await channel.exchange_declare(self.dlx, durable=True, timeout=timeout)  # direct
        await declare_queue(self.dlq, arguments=self.dlq_arguments)
        await channel.queue_bind(self.dlq, self.dlx, routing_key=self.dlq, timeout=timeout)
        await channel.exchange_declare(self.exchange, durable=True, timeout=timeout)  # direct
        declared = await declare_queue(self.queue, arguments=self.arguments)
        await channel.queue_bind(self.queue, self.exchange, routing_key=self.queue, timeout=timeout)
        return int(declared.message_count or 0)

    async def check_exchange(self, channel: AbstractChannel, timeout: float) -> int:
        """Intake's: the order exchange is there (a passive declare, which needs no right; a
        missing one closes the channel with NOT_FOUND until the consumers have declared it)."""
        await channel.exchange_declare(self.exchange, passive=True, timeout=timeout)
        return 0

    def permissions(self, *roles: Role) -> Permissions:
        """What an account with these roles needs on the vhost, and nothing more (several
        roles: one account shared by them, as RABBITMQ_USER alone is).

        - intake: write to the order exchange. Its passive declare needs nothing; it may not
          configure anything, read anything, nor publish to the default exchange (so to no
          queue directly) or to the dead-letter exchange.
        - consumer: configure Q, Q.dlq, Q.dlx and Q.exchange (it declares them); write to Q
          and Q.dlq (binding them) and to Q.dlx (Q's dead-letter exchange, and its own dead
          letters); read Q (consuming, and declaring a queue with a dead-letter exchange),
          Q.dlx and Q.exchange (binding from them). It may not write to the order exchange.
        """
        grants = {
            "intake": Permissions(NOTHING, _any_of(self.exchange), NOTHING),
            "consumer": Permissions(
                configure=_any_of(self.queue, self.dlq, self.dlx, self.exchange),
                write=_any_of(self.queue, self.dlq, self.dlx),
                read=_any_of(self.queue, self.dlx, self.exchange),
            ),
        }
        chosen = [grants[role] for role in roles]
        return Permissions(
            *(_union([getattr(p, kind) for p in chosen]) for kind in Permissions._fields)
        )


def _account(settings: RabbitMQ, role: Role) -> str:
    """Which account a role's connections log in as, and the settings that name it."""
    if role == "consumer" and settings.consumer_user is not None:
        user, names = settings.consumer_user, "RABBITMQ_CONSUMER_USER/RABBITMQ_CONSUMER_PASSWORD"
    else:
        user, names = settings.user, "RABBITMQ_USER/RABBITMQ_PASSWORD"
    return f"user {user!r} ({names}) on vhost {settings.vhost!r}"


def _refusal(failure: BaseException | None) -> str | None:
    """What RabbitMQ said when it refused the account, or None for any other failure."""
    if isinstance(failure, _REFUSALS):
        return str(failure)
    # A user without access to the vhost (or a vhost that is not there): RabbitMQ answers
    # connection.open with connection.close (NOT_ALLOWED), which aiormq reports as an unexpected
    # frame, without the broker's text.
    closed_at_open = "Connection.Close" in str(failure)
    if isinstance(failure, aiormq.exceptions.InvalidFrameError) and closed_at_open:
        return "NOT_ALLOWED: the vhost was refused (no permissions on it, or it does not exist)"
    return None


Serve = Callable[[asyncio.Event], Awaitable[None]]


async def _reconnecting(
    stopping: asyncio.Event,
    serve: Serve,
    settings: RabbitMQ,
    *,
    name: str = "connection",
    account: str = "",
) -> None:
    """Run `serve` (connect, then serve until the connection is lost) again after each failure,
    with backoff, until `stopping` is set: the adapter's one reconnect loop."""
    wait = wait_exponential(
        multiplier=settings.reconnect_first_seconds, max=settings.reconnect_max_seconds
    )
    # The logger's name (shop.messaging.rabbitmq.publisher, .dead-letters or .consumer) says
    # which connection it is.
    which = log.getChild(name)

    def report(failure: BaseException | None, delay: float) -> None:
        """Log why a connection failed before the next attempt: a refusal as such, naming the
        account (never its password) and the settings to check; anything else as a warning."""
        why = _refusal(failure)
        if account and why is not None:
            which.error(
                "ACCESS_REFUSED: RabbitMQ refused %s: %s; check the account, its password and "
                "its permissions; trying again in %.1fs",
                account,
                why,
                delay,
            )
        else:
            which.warning("connection failed (%r); trying again in %.1fs", failure, delay)

    await keep_trying(partial(serve, stopping), stopping, wait=wait, on_failure=report)


def _keep(tasks: Supervisor, settings: RabbitMQ, name: str, serve: Serve, role: Role) -> None:
    """Keep the connection `name` (logged in as `role`'s account) with `serve`, in a task."""
    account = _account(settings, role)
    run = partial(_reconnecting, serve=serve, settings=settings, name=name, account=account)
    tasks.start(f"rabbitmq-{name}", run)


Declare = Callable[[AbstractChannel, float], Awaitable[int]]


class _Confirming:
    """A confirming channel on a connection of its own, kept by a task (`serve`): intake's to
    the order exchange, or the consumers' dead letters to the dead-letter exchange."""

    def __init__(
        self,
        broker: RabbitBroker,
        role: str,
        url: str,
        declare: Declare,
        exchange: str,
        routing_key: str,
    ) -> None:
        self._broker = broker
        self.role = role
        self._url = url
        self._declare = declare
        self._exchange, self._routing_key = exchange, routing_key
        self.channel: AbstractChannel | None = None
        self._renew_after = 0.0  # loop time before which a nack renews no channel

    async def serve(self, stopping: asyncio.Event) -> None:
        """Connect, then publish on that connection until it is lost (raises) or `stopping`."""
        channel = await self._broker._open(self.role, self._url, self._declare, **_CONFIRMING)
        self.channel = channel
        log.info("rabbitmq %s connected; exchange %s ready", self.role, self._exchange)
        await first_of(stopping, _closed(channel.connection.closing))
        if not stopping.is_set():
            self.channel = None
            raise ConnectionError(f"{self.role} connection lost")

    async def renew(self) -> None:
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
        old = self.channel
        if old is None or loop.time() < self._renew_after:
            return
        self._renew_after = math.inf  # while this renewal runs, no other starts
        broker = self._broker
        try:
            self.channel = await broker._open_channel(old.connection, self._declare, **_CONFIRMING)
            log.warning("RabbitMQ refused a publish: publishing on a new channel from now on")
            with contextlib.suppress(Exception):
                async with asyncio.timeout(broker._timeout):
                    await old.close()
        except Exception as exc:  # no new channel now: a later refusal tries again
            log.warning("could not open a new RabbitMQ channel: %r", exc)
        finally:
            self._renew_after = loop.time() + broker._settings.renew_channel_seconds

    async def publish(self, messages: Sequence[Outgoing], timeout: float) -> None:
        channel = self.channel
        if channel is None:
            raise PublishError("not connected to RabbitMQ")
        if channel.is_closed:  # closed by the broker (the connection is still there)
            await self.renew()
            raise PublishError("RabbitMQ channel closed")
        exchange, routing_key = self._exchange, self._routing_key
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
                await self.renew()
            raise PublishError(f"RabbitMQ refused the message: {exc!r}") from exc

    def check(self) -> None:
        channel = self.channel
        if channel is None or channel.is_closed or channel.connection.is_closed:
            raise ConnectionError(f"not connected to RabbitMQ ({self.role})")

    async def close(self, timeout: float) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            await _close(channel.connection, timeout)


class RabbitBroker:
    """The order commands on RabbitMQ: the `Broker` port over intake's publishing connection
    (unless `intake` is false: a process that only consumes), a connection of its own per
    consumer, and one for the consumers' dead letters once there is a consumer."""

    name = "rabbitmq"

    def __init__(self, settings: RabbitMQ, *, timeout: float, intake: bool = True) -> None:
        self._settings = settings
        self.topology = t = Topology(settings)
        self._timeout = timeout
        self._intake = (
            _Confirming(self, "publisher", settings.url, t.check_exchange, t.exchange, t.queue)
            if intake
            else None
        )
        self._dead_letters = _Confirming(
            self, "dead-letters", settings.consumer_url, t.declare, t.dlx, t.dlq
        )
        self._inbound: list[RabbitInbound] = []
        self._tasks = Supervisor()
        self._closed = False

    def start(self) -> None:
        if self._intake is not None:
            _keep(self._tasks, self._settings, "publisher", self._intake.serve, "intake")

    def publisher(self) -> RabbitBroker:
        """The outbound port to the order exchange: the broker itself."""
        return self

    def consumer(self, batch_size: int) -> RabbitInbound:
        """A consumer with `batch_size` deliveries in flight, on a connection of its own."""
        if not self._inbound:  # the first: the consumers' dead letters need their connection
            _keep(self._tasks, self._settings, "dead-letters", self._dead_letters.serve, "consumer")
        inbound = RabbitInbound(self, prefetch=batch_size)
        self._inbound.append(inbound)
        inbound.start()
        return inbound

    async def _open(
        self, role: str, url: str, declare: Declare, **channel_options: Any
    ) -> AbstractChannel:
        """A new connection as the account in `url`, a channel on it and `declare` done."""
        async with asyncio.timeout(self._timeout):
            # which process holds it, as the management UI and rabbitmqctl show it
            name: dict[str, Any] = {"connection_name": f"shop-{role} pid {os.getpid()}"}
            connection = await aiormq.connect(url, client_properties=name)
        try:
            channel = await self._open_channel(connection, declare, **channel_options)
        except BaseException:
            await _close(connection, self._settings.close_seconds)
            raise
        CONNECTIONS.labels(role).inc()
        return channel

    async def _open_channel(
        self, connection: aiormq.abc.AbstractConnection, declare: Declare, **channel_options: Any
    ) -> AbstractChannel:
        async with asyncio.timeout(self._timeout):
            channel = await connection.channel(**channel_options)
            await declare(channel, self._timeout)
        return channel

    async def publish(self, messages: Sequence[Outgoing], *, timeout: float) -> None:
        """Publish persistent messages (mandatory) to the order exchange and wait for every
        confirm, or raise."""
        if self._intake is None:
            raise PublishError("this process does not publish order commands")
        await self._intake.publish(messages, timeout)

    async def check(self, timeout: float = 0.0) -> None:
        """Raise unless every connection this process keeps is open: intake's, and with
        consumers theirs and their dead letters'."""
        if self._closed:
            raise ConnectionError("closed")
        if self._intake is not None:
            self._intake.check()
        if self._inbound:
            self._dead_letters.check()
        for inbound in self._inbound:
            inbound.check()

    async def close(self) -> None:
        """Close the consumers (what they did not ack goes back to the queue), then publishing."""
        self._closed = True
        for inbound in self._inbound:
            await inbound.close()
        await self._tasks.stop(timeout=self._settings.close_seconds)
        for publishing in (self._intake, self._dead_letters):
            if publishing is not None:
                await publishing.close(self._settings.close_seconds)


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
        _keep(self._tasks, self._broker._settings, "consumer", self._consume, "consumer")

    def check(self) -> None:
        channel = self._channel
        if channel is None or channel.is_closed:
            raise ConnectionError("not connected to RabbitMQ (consumer)")

    async def _consume(self, stopping: asyncio.Event) -> None:
        """Connect, then consume until the connection is lost (raises) or `stopping`."""
        broker = self._broker
        url, declare = broker._settings.consumer_url, self.topology.declare
        channel = await broker._open("consumer", url, declare, publisher_confirms=False)
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
        batch: list[DeliveredMessage] = []
        if inbox.empty():
            try:
                async with asyncio.timeout(timeout):
                    batch.append(await inbox.get())
            except TimeoutError:
                return []
        while len(batch) < max_messages and not inbox.empty():
            batch.append(inbox.get_nowait())
        # Delivered on a channel that has since closed: the broker delivers them again.
        return [m for m in batch if m.channel is self._channel]

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
        await self._broker._dead_letters.publish([dead], self._timeout)
        # If its channel closed meanwhile, there is nothing to ack: it comes again, and goes to
        # the DLQ again.
        await self.ack([delivery])

    def header(self, delivery: DeliveredMessage, name: str) -> str | bytes | None:
        value = (delivery.header.properties.headers or {}).get(name)
        return value if isinstance(value, str | bytes) else None

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
