"""The limits, measured on the same machine in the same run: what each part can do alone."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import aio_pika
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from sqlalchemy import MetaData, Table, text

from devstack import rabbitmq
from devstack.settings import StackSettings
from shop import jsonutil
from shop.ids import uuid7
from shop.messaging.kafka import client_config, ensure_topics, producer_config
from shop.orders.domain import AsyncChannel
from shop.orders.models import OrderCommand
from shop.orders.tables import orders
from shop.settings import Kafka, Settings
from shop.storage.database import create_engine


def order_command(i: int, *, product_id: int = 1, channel: AsyncChannel = "kafka") -> bytes:
    """The i-th order command of a run, as the order service puts it on a broker."""
    return (
        OrderCommand.model_construct(
            id=uuid7(),
            user_id=i + 1,
            product_id=product_id,
            quantity=1,
            channel=channel,
            accepted_at=dt.datetime.now(dt.UTC),
        )
        .model_dump_json()
        .encode()
    )


def delete_topics(kafka: Kafka, topics: list[str]) -> None:
    """Remove what a bench run created, so runs do not pile up topics on the broker."""
    admin = AdminClient(client_config(kafka))
    existing = admin.list_topics(timeout=10).topics
    doomed = [topic for topic in topics if topic in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=10).values():
            future.result(timeout=15)


def kafka_produce(kafka: Kafka, *, messages: int) -> dict[str, Any]:
    """Raw produce with acks=all (idempotent), one Python process, until every ack is in; as
    `kafka`'s account (the bench's: the stack's administrator), over its TLS if it has one."""
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(kafka, [topic]))
    config = producer_config(kafka, delivery_timeout=30)
    config.pop("logger", None)
    producer = Producer(config)
    bodies = [order_command(i) for i in range(1000)]
    started = time.perf_counter()
    for i in range(messages):
        while True:
            try:
                producer.produce(topic, key=str(i % 64), value=bodies[i % 1000])
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(60)
    seconds = time.perf_counter() - started
    delete_topics(kafka, [topic])
    return {
        "messages": messages - left,
        "seconds": round(seconds, 3),
        "per_second": round((messages - left) / seconds),
        "topic": topic,
    }


async def rabbitmq_publish(
    settings: StackSettings, *, messages: int, window: int = 256
) -> dict[str, Any]:
    """Raw persistent publishes with publisher confirms, `window` unconfirmed at a time (to a
    scratch queue through the default exchange: as the administrator, whom alone that is
    allowed)."""
    queue_name = f"bench-raw-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(rabbitmq.admin_url(settings), timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        quorum = settings.rabbitmq.queue_type == "quorum"  # the order queue's kind
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"} if quorum else None
        )
        bodies = [order_command(i) for i in range(1000)]
        started = time.perf_counter()
        for start in range(0, messages, window):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(
                            bodies[i % 1000], delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                        ),
                        routing_key=queue_name,
                        timeout=30,
                    )
                    for i in range(start, min(messages, start + window))
                )
            )
        seconds = time.perf_counter() - started
        await queue.delete(if_unused=False, if_empty=False)
    return {
        "messages": messages,
        "seconds": round(seconds, 3),
        "per_second": round(messages / seconds),
        "window": window,
    }


async def batched_inserts(settings: Settings, *, rows: int, batch: int = 500) -> dict[str, Any]:
    """Raw inserts into a copy of the orders table, `batch` rows per transaction."""
    # The migration account: the scratch table is created and dropped (the services' account
    # may only read and write rows).
    engine = create_engine(settings.migration_account())
    table = f"bench_orders_{uuid.uuid4().hex[:8]}"
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE TABLE {table} LIKE orders"))
        now = jsonutil.utcnow()
        # The same SQLAlchemy Core insert the consumers use (multi-row INSERTs).
        scratch = Table(table, MetaData(), *(column.copy() for column in orders.c))
        started = time.perf_counter()
        for start in range(0, rows, batch):
            params = [
                {
                    "id": uuid7().bytes,
                    "user_id": i,
                    "product_id": 1,
                    "quantity": 1,
                    "status": "confirmed",
                    "reason": None,
                    "unit_price": 1,
                    "total_price": 1,
                    "channel": "kafka",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(start, min(rows, start + batch))
            ]
            async with engine.begin() as conn:
                await conn.execute(scratch.insert(), params)
        seconds = time.perf_counter() - started
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {table}"))
    finally:
        await engine.dispose()
    return {
        "rows": rows,
        "batch": batch,
        "seconds": round(seconds, 3),
        "per_second": round(rows / seconds),
    }
