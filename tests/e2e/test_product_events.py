"""Every product change reaches Kafka through the outbox, also across a Kafka outage."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

import devstack as stack
from devstack.settings import StackSettings
from tests.conftest import STACK
from tests.support import eventually, observer, read_events

pytestmark = pytest.mark.e2e


def _for(product_id: int) -> Any:
    def keep(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["data"]["id"] == product_id]

    return keep


async def test_each_change_publishes_exactly_one_event(
    products: httpx.AsyncClient, settings: StackSettings
) -> None:
    created = (
        await products.post("/products", json={"name": f"ev-{uuid.uuid4().hex}", "price": 2})
    ).json()
    pid = created["id"]
    await products.patch(f"/products/{pid}", json={"stock": 4})
    await products.delete(f"/products/{pid}")
    mine = _for(pid)
    events = mine(
        await asyncio.to_thread(
            read_events,
            observer(settings),
            settings.kafka.product_events_topic,
            until=lambda evs: len(mine(evs)) >= 3,
            timeout=30,
        )
    )
    assert [e["type"] for e in events] == ["product.created", "product.updated", "product.deleted"]
    created_event = events[0]
    assert set(created_event) == {"event_id", "type", "version", "occurred_at", "data"}
    assert [e["version"] for e in events] == [1, 2, 3]  # the product's version after each
    assert created_event["data"] == created
    assert events[1]["data"]["stock"] == 4
    assert events[2]["data"] == {"id": pid}
    assert len({e["event_id"] for e in events}) == 3


@pytest.mark.disruptive
async def test_writes_succeed_while_kafka_is_down_and_events_follow(
    products: httpx.AsyncClient, settings: StackSettings
) -> None:
    await asyncio.to_thread(stack.stop, "kafka", STACK)
    try:
        tag = f"outage-{uuid.uuid4().hex}"
        made = []
        for i in range(20):
            response = await products.post("/products", json={"name": f"{tag}-{i}", "price": 1})
            assert response.status_code == 201, response.text
            made.append(response.json()["id"])
        not_ready = await products.get("/readyz")
        assert not_ready.status_code == 503
        assert "kafka" in not_ready.json()["detail"]
    finally:
        await asyncio.to_thread(stack.start, "kafka", STACK)

    async def ready() -> bool:
        return (await products.get("/readyz")).status_code == 200

    await eventually(ready, timeout=60, what="product service ready after Kafka restart")
    wanted = set(made)
    events = await asyncio.to_thread(
        read_events,
        observer(settings),
        settings.kafka.product_events_topic,
        until=lambda evs: wanted <= {e["data"]["id"] for e in evs},
        timeout=60,
    )
    created_ids = [
        e["data"]["id"]
        for e in events
        if e["type"] == "product.created" and e["data"]["id"] in wanted
    ]
    assert sorted(created_ids) == sorted(made), "events missing or doubled after the outage"
