"""Order commands put straight on Kafka or RabbitMQ, not through intake: each is checked as
intake checks a request, and one that intake would refuse goes to the dead letters with its
reason; nothing of it is stored."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.settings import StackSettings
from shop.orders.domain import AsyncChannel
from tests.e2e.orders_support import (
    dead_letters_in_queue,
    dead_letters_on_topic,
    new_product,
    publish_to_queue,
    publish_to_topic,
    stock_of,
    stored_orders,
    wait_until_stored,
)
from tests.support import observer

pytestmark = pytest.mark.e2e


def _command(product_id: int, channel: AsyncChannel, **changes: Any) -> bytes:
    """A command as intake publishes one (1 unit for user 5), with `changes` to its fields."""
    command = {
        "id": str(uuid.uuid4()),
        "user_id": 5,
        "product_id": product_id,
        "quantity": 1,
        "channel": channel,
        "accepted_at": dt.datetime.now(dt.UTC).isoformat(),
        "idempotency_key": None,
        **changes,
    }
    return json.dumps(command).encode()


@pytest.mark.parametrize("channel", ["kafka", "rabbitmq"])
async def test_commands_intake_would_refuse_are_dead_lettered_with_why_and_never_stored(
    products: httpx.AsyncClient,
    orders: httpx.AsyncClient,
    database: AsyncEngine,
    settings: StackSettings,
    channel: AsyncChannel,
) -> None:
    most = settings.orders.max_quantity
    pid = await new_product(products, stock=10 * most)
    refused = {
        _command(pid, channel, quantity=most + 1): f"quantity: An order may be for at most {most}",
        _command(pid, channel, idempotency_key="k" * 256): "idempotency_key",
        _command(pid, channel, user_id=0): "user_id",
    }
    valid = _command(pid, channel, quantity=most, idempotency_key=f"fine-{uuid.uuid4()}")
    bodies = [*refused, valid]  # the valid one last: it is stored, its neighbours are not
    if channel == "kafka":
        await asyncio.to_thread(
            publish_to_topic, settings.kafka, settings.kafka.topic, str(pid), bodies
        )
        on_topic = await asyncio.to_thread(
            dead_letters_on_topic,
            observer(settings),
            settings.kafka.dlq_topic,
            set(refused),
            timeout=30,
        )
        reasons = {body: _text(headers.get("reason")) for body, headers in on_topic.items()}
    else:
        await publish_to_queue(settings, bodies)
        in_queue = await dead_letters_in_queue(settings, set(refused), timeout=30)
        reasons = {body: _text(headers.get("x-reason")) for body, headers in in_queue.items()}
    assert reasons.keys() == refused.keys(), "a refused command is missing from the dead letters"
    for body, why in refused.items():
        assert reasons[body].startswith("invalid order command:"), reasons[body]
        assert why in reasons[body], reasons[body]

    valid_id = json.loads(valid)["id"]
    stored = await wait_until_stored(database, pid, {valid_id}, timeout=30)
    assert [(o["id"], o["status"], o["quantity"]) for o in stored] == [
        (valid_id, "confirmed", most)
    ]
    assert await stock_of(database, pid) == 9 * most
    for body in refused:
        answer = await orders.get(f"/orders/{json.loads(body)['id']}")
        assert answer.status_code == 404, answer.text
    assert len(await stored_orders(database, pid)) == 1


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
