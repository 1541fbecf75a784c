"""Order commands onto a broker, behind the service's one `publish_command` shape."""

from __future__ import annotations

import logging
from collections.abc import Callable

from shop.errors import Unavailable
from shop.messaging.ports import Outbound, Outgoing, PublishError
from shop.orders.models import OrderCommand

log = logging.getLogger(__name__)


def by_product(command: OrderCommand) -> str:
    """Kafka key: a product's orders share a partition, so they stay in order."""
    return str(command.product_id)


def by_order(command: OrderCommand) -> str:
    """AMQP message id: the order's own id."""
    return str(command.id)


class BrokerCommands:
    """Publishes order commands through an outbound port; a missing confirm is a 503."""

    def __init__(
        self,
        outbound: Outbound,
        *,
        broker: str,
        deadline: float,
        retry_after: int,
        key: Callable[[OrderCommand], str],
    ) -> None:
        self._outbound = outbound
        self._broker = broker
        self._deadline = deadline
        self._retry_after = retry_after
        self._key = key

    async def publish_command(self, command: OrderCommand) -> None:
        message = Outgoing(self._key(command), command.model_dump_json().encode())
        try:
            await self._outbound.publish([message], timeout=self._deadline)
        except PublishError as exc:
            log.warning("%s did not confirm order %s: %s", self._broker, command.id, exc)
            raise Unavailable(
                f"{self._broker} did not confirm the order in time ({exc}); nothing was accepted.",
                retry_after=self._retry_after,
            ) from exc
