"""A command delivered again (redelivery, a rewound offset) makes one order and takes stock once."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from devstack import identities
from devstack import kafka as stack_kafka
from devstack.settings import StackSettings
from shop.messaging.kafka import client_config
from shop.orders.domain import AsyncChannel
from shop.orders.models import OrderCommand
from shop.settings import Settings
from tests.conftest import RUN, TEST_ENV
from tests.e2e.orders_support import new_product, order_count, stock_of, stored_orders
from tests.support import eventually, observer

pytestmark = pytest.mark.e2e


def _command(product_id: int, channel: AsyncChannel) -> bytes:
    return (
        OrderCommand(
            id=uuid.uuid4(),
            user_id=5,
            product_id=product_id,
            quantity=2,
            channel=channel,
            accepted_at=dt.datetime.now(dt.UTC),
        )
        .model_dump_json()
        .encode()
    )


def _produce(settings: Settings, key: str, value: bytes, copies: int) -> None:
    producer = Producer({**client_config(settings.kafka), "acks": "all"})
    for _ in range(copies):
        producer.produce(settings.kafka.topic, key=key, value=value)
    assert producer.flush(10) == 0


async def _publish(settings: Settings, body: bytes, copies: int) -> None:
    connection = await aio_pika.connect(settings.rabbitmq.url, timeout=10)  # intake's account
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{settings.rabbitmq.queue}.exchange", ensure=True)
        for _ in range(copies):
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=settings.rabbitmq.queue,
            )


async def _settled(database: Any, product_id: int, stock: int) -> list[dict[str, Any]]:
    async def done() -> list[dict[str, Any]] | None:
        stored = await stored_orders(database, product_id)
        return stored if stored and await stock_of(database, product_id) == stock else None

    return await eventually(done, timeout=30, what="the command processed")


@pytest.mark.parametrize("channel", ["kafka", "rabbitmq"])
async def test_a_command_delivered_twice_stores_one_order_and_takes_stock_once(
    products: httpx.AsyncClient,
    orders: httpx.AsyncClient,
    database: Any,
    settings: Settings,
    channel: AsyncChannel,
) -> None:
    pid = await new_product(products, stock=10)
    body = _command(pid, channel)

    async def deliver(copies: int) -> None:
        if channel == "kafka":
            await asyncio.to_thread(_produce, settings, str(pid), body, copies)
        else:
            await _publish(settings, body, copies)

    await deliver(2)  # twins, probably in one batch
    first = await _settled(database, pid, 8)
    await deliver(1)  # again, in a later batch
    # A sentinel through the same partition/queue shows the redelivered copy was consumed.
    sentinel = _command(pid, channel)
    if channel == "kafka":
        await asyncio.to_thread(_produce, settings, str(pid), sentinel, 1)
    else:
        await _publish(settings, sentinel, 1)

    async def sentinel_stored() -> bool:
        return len(await stored_orders(database, pid)) == 2

    await eventually(sentinel_stored, timeout=30, what="sentinel stored")
    assert len(first) == 1
    assert await stock_of(database, pid) == 6  # 2 for the command, 2 for the sentinel


def _group_caught_up(settings: Settings, group: str) -> bool:
    """Whether `group` has committed offsets up to the end of every partition of the topic."""
    consumer = Consumer({**client_config(observer(settings)), "group.id": group})
    try:
        meta = consumer.list_topics(settings.kafka.topic, timeout=5).topics[settings.kafka.topic]
        parts = [TopicPartition(settings.kafka.topic, p) for p in meta.partitions]
        for tp in consumer.committed(parts, timeout=5):
            _low, high = consumer.get_watermark_offsets(tp, timeout=5)
            if high > 0 and tp.offset < high:
                return False
        return True
    finally:
        consumer.close()


async def test_rereading_the_whole_order_topic_changes_nothing(
    products: httpx.AsyncClient,
    orders: httpx.AsyncClient,
    database: Any,
    settings: StackSettings,
    tmp_path: Path,
) -> None:
    pid = await new_product(products, stock=20)
    accepted = [
        (
            await orders.post(
                "/orders/async/kafka", json={"user_id": 9, "product_id": pid, "quantity": 1}
            )
        ).json()["id"]
        for _ in range(5)
    ]

    async def stored() -> bool:
        return {o["id"] for o in await stored_orders(database, pid)} == set(accepted)

    await eventually(stored, timeout=30, what="orders stored")
    rows_before, stock_before = await order_count(database), await stock_of(database, pid)
    # A consumer in a new group starts from the earliest offset: every command again.
    group = f"test-{RUN}-rewind-{uuid.uuid4().hex[:8]}"
    rewinder = settings.replace(kafka_consumer_group=group)
    await asyncio.to_thread(stack_kafka.provision, rewinder)  # the order service's, in its group
    log = (tmp_path / "rewind.log").open("wb")
    rewind = subprocess.Popen(
        [sys.executable, "-m", "shop", "consume", "kafka"],
        env={
            **os.environ,
            **identities.service_env("orders"),
            **TEST_ENV,
            "KAFKA_CONSUMER_GROUP": group,
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        async def caught_up() -> bool:
            return await asyncio.to_thread(_group_caught_up, settings, group)

        await eventually(caught_up, timeout=60, interval=0.5, what="rewound consumer caught up")
    finally:
        rewind.terminate()
        code = rewind.wait(timeout=15)
        log.close()
        await asyncio.to_thread(stack_kafka.revoke, rewinder, group)
    assert code in (0, -15), (tmp_path / "rewind.log").read_text()
    assert await order_count(database) == rows_before
    assert await stock_of(database, pid) == stock_before
