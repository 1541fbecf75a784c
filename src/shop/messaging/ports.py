"""The messaging ports: a broker with a lifecycle, batches of deliveries in, confirmed messages out.

The runtime, the order consumer and the publishers are written against these; one adapter per
broker (`messaging.kafka`, `messaging.rabbitmq`) owns every connection, offset, ack, dead-letter
and reconnect detail behind them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar


class PublishError(Exception):
    """The broker did not confirm a message in time, or refused it."""


class Delivery(Protocol):
    """One message taken from a broker and not settled yet."""

    @property
    def body(self) -> bytes: ...


D = TypeVar("D", bound=Delivery)


class Inbound(Protocol[D]):
    """Deliveries from one topic or queue, in batches, each settled exactly once.

    `ack` and `dead_letter` are called only once the batch the deliveries came in has been
    handled: an adapter may treat settling a delivery as settling every earlier delivery of
    its partition (Kafka offsets). What is never settled is delivered again, to this consumer
    or another one.
    """

    async def take(self, max_messages: int, timeout: float) -> Sequence[D]:
        """Up to `max_messages` deliveries; as soon as one is there, empty after `timeout`."""

    async def ack(self, deliveries: Sequence[D]) -> None:
        """The deliveries are done with: never deliver them again."""

    async def dead_letter(self, delivery: D, reason: str) -> None:
        """Put the delivery on the dead-letter queue with `reason` (confirmed), then settle it.

        Raises `PublishError` when the dead-letter queue did not confirm; the delivery stays
        unsettled.
        """

    async def depth(self) -> int:
        """Messages waiting: consumer lag (Kafka) or ready messages (RabbitMQ)."""

    def header(self, delivery: D, name: str) -> str | bytes | None:
        """A header the delivery carries (the publisher's `Outgoing.headers`), as it came off
        the wire: untrusted, for the caller to check; None when absent."""


class Outgoing(NamedTuple):
    """A message to publish: `key` is the Kafka key or the AMQP message id."""

    key: str
    body: bytes
    headers: Mapping[str, str] | None = None


class Outbound(Protocol):
    """Publishes to one destination (a topic, or a queue through an exchange)."""

    async def publish(self, messages: Sequence[Outgoing], *, timeout: float) -> None:
        """Publish `messages` in order and wait until the broker confirmed every one.

        Raises `PublishError` when it did not within `timeout` seconds, or refused one.
        """


class Broker(Protocol):
    """One broker carrying the order commands (a Kafka topic or a RabbitMQ queue, with its dead
    letters), from `start` to `close`.

    The service serves its other paths while a broker is down: `start` returns at once and the
    adapter connects (and reconnects) in the background. `close` may be called more than once
    (and without `start`); it stops every task and thread the adapter started and closes its
    connections, after which nothing it handed out is used again.
    """

    name: str  # the order channel it carries ("kafka", "rabbitmq") and its readiness check

    def start(self) -> None: ...

    async def check(self, timeout: float) -> None:
        """Raise unless the broker answers within `timeout` seconds."""

    def publisher(self) -> Outbound:
        """The outbound port to the order commands (usable before `start`)."""

    def consumer(self, batch_size: int) -> Inbound[Any]:
        """A new inbound port on the order commands, `batch_size` deliveries at a time."""

    async def close(self) -> None: ...
