"""Order commands onto a broker, behind the service's one `publish_command` shape."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.trace import SpanKind

from shop import tracing
from shop.errors import Unavailable
from shop.messaging.ports import Outbound, Outgoing, PublishError
from shop.orders.models import OrderCommand
from shop.settings import Orders

log = logging.getLogger(__name__)


def by_product(command: OrderCommand) -> str:
    """Kafka key: a product's orders share a partition, so they stay in order."""
    return str(command.product_id)


def by_order(command: OrderCommand) -> str:
    """AMQP message id: the order's own id."""
    return str(command.id)


@dataclass(frozen=True, slots=True)
class BrokerCommands:
    """Publishes order commands through an outbound port; a missing confirm is a 503."""

    outbound: Outbound
    broker: str  # its name in a 503's text
    key: Callable[[OrderCommand], str]
    settings: Orders  # the confirm's deadline, and the Retry-After of a 503

    async def publish_command(self, command: OrderCommand) -> None:
        message = Outgoing(self.key(command), command.model_dump_json().encode())
        try:
            if tracing.current() is not None:  # a traced request's
                await self._publish_traced(message, command)
            else:
                await self.outbound.publish(
                    [message], timeout=self.settings.broker_deadline_seconds
                )
        except PublishError as exc:
            log.warning("%s did not confirm order %s: %s", self.broker, command.id, exc)
            raise Unavailable(
                f"{self.broker} did not confirm the order in time ({exc}); nothing was accepted.",
                retry_after=self.settings.broker_retry_after_seconds,
            ) from exc

    async def _publish_traced(self, message: Outgoing, command: OrderCommand) -> None:
        """Publish in a PRODUCER span whose context the message carries to the consumer."""
        attributes = {"messaging.system": self.broker.lower(), tracing.ORDER_ID: str(command.id)}
        with tracing.span("publish order", kind=SpanKind.PRODUCER, attributes=attributes):
            traced = message._replace(headers=tracing.headers())
            await self.outbound.publish([traced], timeout=self.settings.broker_deadline_seconds)
