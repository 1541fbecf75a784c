"""What the order tests share: making products, placing orders, checking the invariants,
putting messages straight on the brokers and reading their dead letters."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import httpx
from confluent_kafka import Consumer, Producer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack import kafka as stack_kafka
from devstack import rabbitmq
from devstack.settings import StackSettings
from shop.messaging.kafka import client_config
from shop.orders.tables import order_aliases
from shop.orders.tables import orders as orders_table
from shop.products.tables import products as products_table
from shop.settings import Kafka
from tests.conftest import RUN, TEST_ENV
from tests.support import eventually, free_port

PATHS = ("sync", "kafka", "rabbitmq")


async def new_product(products: httpx.AsyncClient, *, stock: int | None, price: float = 2.5) -> int:
    response = await products.post(
        "/products", json={"name": f"p-{uuid.uuid4().hex[:10]}", "price": price, "stock": stock}
    )
    assert response.status_code == 201, response.text
    product_id: int = response.json()["id"]
    return product_id


def order_url(path: str) -> str:
    return "/orders/sync" if path == "sync" else f"/orders/async/{path}"


async def place(
    orders: httpx.AsyncClient,
    path: str,
    *,
    product_id: int,
    quantity: int = 1,
    user_id: int = 1,
    key: str | None = None,
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return await orders.post(
        order_url(path),
        json={"user_id": user_id, "product_id": product_id, "quantity": quantity},
        headers=headers,
    )


@dataclass
class Tally:
    """Answers to a set of order requests."""

    accepted: dict[str, str] = field(default_factory=dict)  # id -> path
    refused: int = 0  # 409
    other: list[str] = field(default_factory=list)

    def record(self, path: str, response: httpx.Response) -> None:
        if response.status_code in (201, 202):
            self.accepted[response.json()["id"]] = path
        elif response.status_code == 409:
            self.refused += 1
        else:
            self.other.append(f"{response.status_code} {response.text[:200]}")


async def all_pages(orders: httpx.AsyncClient, url: str) -> list[str]:
    """The ids of every order a list returns, following its Link: rel="next" to the end."""
    seen: list[str] = []
    next_url: str | None = url
    while next_url is not None:
        page = await orders.get(next_url)
        assert page.status_code == 200, page.text
        seen += [o["id"] for o in page.json()]
        link = page.headers.get("link")
        next_url = link[link.index("<") + 1 : link.index(">")] if link else None
        assert next_url is None or next_url.startswith("/orders?"), "not a relative link"
    return seen


async def stored_orders(database: AsyncEngine, product_id: int) -> list[dict[str, Any]]:
    async with database.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    orders_table.c.id,
                    orders_table.c.status,
                    orders_table.c.quantity,
                    orders_table.c.channel,
                    orders_table.c.reason,
                ).where(orders_table.c.product_id == product_id)
            )
        ).all()
    return [
        {
            "id": str(uuid.UUID(bytes=r.id)),
            "status": r.status,
            "quantity": r.quantity,
            "channel": r.channel,
            "reason": r.reason,
        }
        for r in rows
    ]


async def aliases_of(database: AsyncEngine, ids: set[str]) -> dict[str, str]:
    """Of these order ids, the aliases (async retries that could not claim their key at intake,
    docs/orders.md), each with the id of the order it joined."""
    async with database.connect() as conn:
        rows = (
            await conn.execute(
                select(order_aliases.c.id, order_aliases.c.order_id).where(
                    order_aliases.c.id.in_([uuid.UUID(i).bytes for i in ids])
                )
            )
        ).all()
    return {str(uuid.UUID(bytes=r.id)): str(uuid.UUID(bytes=r.order_id)) for r in rows}


async def stock_of(database: AsyncEngine, product_id: int) -> int | None:
    async with database.connect() as conn:
        stock: int | None = await conn.scalar(
            select(products_table.c.stock).where(products_table.c.id == product_id)
        )
    return stock


async def order_count(database: AsyncEngine) -> int:
    async with database.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(orders_table)) or 0)


async def wait_until_stored(
    database: AsyncEngine, product_id: int, ids: set[str], *, timeout: float = 60
) -> list[dict[str, Any]]:
    """Every id in `ids` is stored (bounded wait); returns the product's stored orders."""

    async def all_there() -> list[dict[str, Any]] | None:
        stored = await stored_orders(database, product_id)
        return stored if ids <= {o["id"] for o in stored} else None

    return await eventually(all_there, timeout=timeout, what=f"{len(ids)} accepted orders stored")


async def stock_and_confirmed_units(database: AsyncEngine, product_id: int) -> tuple[int, int]:
    """Current stock and units in confirmed orders, read by one statement (one snapshot), so
    a consumer committing between two reads cannot make the sum look wrong."""
    confirmed = (
        select(func.coalesce(func.sum(orders_table.c.quantity), 0))
        .where(orders_table.c.product_id == product_id, orders_table.c.status == "confirmed")
        .scalar_subquery()
    )
    async with database.connect() as conn:
        row = (
            await conn.execute(
                select(products_table.c.stock, confirmed).where(products_table.c.id == product_id)
            )
        ).one()
    assert row[0] is not None, "these tests use tracked stock"
    return int(row[0]), int(row[1])


async def assert_stock_adds_up(
    database: AsyncEngine, product_id: int, initial: int
) -> list[dict[str, Any]]:
    """No oversell: initial = current + units in confirmed orders, and never below zero."""
    stored = await stored_orders(database, product_id)
    current, confirmed_units = await stock_and_confirmed_units(database, product_id)
    assert current >= 0
    assert initial == current + confirmed_units, (initial, current, confirmed_units)
    return stored


# --- Messages put straight on the brokers, and their dead letters ------------------------------


def dead_letters_on_topic(
    kafka: Kafka, topic: str, wanted: set[bytes], *, timeout: float
) -> dict[bytes, dict[str, str | bytes | None]]:
    """The headers of each wanted value found on `topic` (read from the beginning).
    Blocking: call via to_thread."""
    consumer = Consumer(
        {
            **client_config(kafka),
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    found: dict[bytes, dict[str, str | bytes | None]] = {}
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not wanted <= found.keys():
            msg = consumer.poll(0.2)
            if msg is None or msg.error() or msg.value() not in wanted:
                continue
            value = msg.value()
            assert value is not None
            headers = msg.headers() or []
            found[value] = dict(headers.items() if isinstance(headers, dict) else headers)
    finally:
        consumer.close()
    return found


def publish_to_topic(kafka: Kafka, topic: str, key: str, values: list[bytes]) -> None:
    producer = Producer({**client_config(kafka), "enable.idempotence": True})
    for value in values:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(15) == 0, "poison not delivered to Kafka"


async def publish_to_queue(settings: StackSettings, bodies: list[bytes]) -> None:
    """As anyone who holds intake's account could: to the order exchange, whatever the body."""
    connection = await aio_pika.connect(settings.rabbitmq.url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{settings.rabbitmq.queue}.exchange", ensure=True)
        for body in bodies:
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=settings.rabbitmq.queue,
                mandatory=True,
                timeout=10,
            )


async def dead_letters_in_queue(
    settings: StackSettings, wanted: set[bytes], *, timeout: float
) -> dict[bytes, dict[str, Any]]:
    """The headers of each wanted body found in the dead-letter queue (which is emptied of
    them; anything else is left there)."""
    found: dict[bytes, dict[str, Any]] = {}
    # As the administrator: no service account may read the dead-letter queue.
    connection = await aio_pika.connect(rabbitmq.admin_url(settings), timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(f"{settings.rabbitmq.queue}.dlq", ensure=True)

        async def all_found() -> bool:
            while (message := await queue.get(fail=False, timeout=5)) is not None:
                if message.body in wanted:
                    found[message.body] = dict(message.headers)
                    await message.ack()
                # others stay unacked: closing the channel puts them back
            return wanted <= found.keys()

        await eventually(all_found, timeout=timeout, what="poison in the RabbitMQ dead letters")
    return found


def private_env(settings: StackSettings, tag: str) -> dict[str, str]:
    """Topic, queue and group of one's own, the queue in a vhost of its own (where the
    services' accounts get their rights on its names: `private_vhost`): only this process
    consumes them (the order service's Kafka principal may use them: `provision`). The run
    prefix makes the session teardown delete the topics and those ACLs."""
    name = f"test-{RUN}-{tag}-{uuid.uuid4().hex[:6]}"
    kafka = {
        "KAFKA_TOPIC": f"{name}-orders",
        "KAFKA_DLQ_TOPIC": f"{name}-orders.dlq",
        "KAFKA_CONSUMER_GROUP": f"{name}-order-service",
    }
    stack_kafka.provision(settings.replace(**{k.lower(): v for k, v in kafka.items()}))
    return {
        **TEST_ENV,
        "ORDER_SERVICE_PORT": str(free_port()),
        **kafka,
        "RABBITMQ_VHOST": name,
        "RABBITMQ_QUEUE": f"{name}-orders",
    }


async def private_vhost(settings: StackSettings, env: dict[str, str]) -> StackSettings:
    """The private env's vhost, provisioned as the run's is (`rabbitmq.remove_vhost` at the end)."""
    private = settings.replace(
        rabbitmq_vhost=env["RABBITMQ_VHOST"], rabbitmq_queue=env["RABBITMQ_QUEUE"]
    )
    await asyncio.to_thread(rabbitmq.provision, private)
    return private
