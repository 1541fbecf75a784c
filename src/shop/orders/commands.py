"""The two brokers that carry order commands, behind one `publish_command` shape."""

from __future__ import annotations

from shop.brokers import kafka, rabbitmq
from shop.errors import Unavailable
from shop.orders.models import OrderCommand

RETRY_AFTER_SECONDS = 2


class KafkaCommands:
    """Order commands on a Kafka topic, keyed by product so a product's orders stay in order."""

    def __init__(self, publisher: kafka.KafkaPublisher, *, topic: str, deadline: float) -> None:
        self._publisher = publisher
        self._topic = topic
        self._deadline = deadline

    async def publish_command(self, command: OrderCommand) -> None:
        try:
            await self._publisher.publish_many(
                self._topic,
                [(str(command.product_id), command.model_dump_json().encode())],
                timeout=self._deadline,
            )
        except kafka.PublishError as exc:
            raise Unavailable(
                f"Kafka did not acknowledge the order in time ({exc}); nothing was accepted.",
                retry_after=RETRY_AFTER_SECONDS,
            ) from exc


class RabbitCommands:
    """Order commands on a durable RabbitMQ queue, confirmed by the broker."""

    def __init__(self, rabbit: rabbitmq.RabbitMQ, *, deadline: float) -> None:
        self._rabbit = rabbit
        self._deadline = deadline

    async def publish_command(self, command: OrderCommand) -> None:
        try:
            await self._rabbit.publish(
                command.model_dump_json().encode(),
                message_id=str(command.id),
                timeout=self._deadline,
            )
        except rabbitmq.PublishError as exc:
            raise Unavailable(
                f"RabbitMQ did not confirm the order in time ({exc}); nothing was accepted.",
                retry_after=RETRY_AFTER_SECONDS,
            ) from exc
