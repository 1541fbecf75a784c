"""The order core end to end: bounded totals on every path, isolation, paging, versioned events."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shop.settings import Settings
from tests.e2e.orders_support import (
    PATHS,
    all_pages,
    new_product,
    place,
    stock_of,
    stored_orders,
    wait_until_stored,
)
from tests.support import eventually, observer, read_events

pytestmark = pytest.mark.e2e

HIGHEST_PRICE = 9_999_999_999.99


def _user() -> int:
    return uuid.uuid4().int % 10**12 + 1


async def _get_stored(orders: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    async def stored() -> dict[str, Any] | None:
        answer = await orders.get(f"/orders/{order_id}")
        return answer.json() if answer.status_code == 200 else None

    return await eventually(stored, timeout=30, interval=0.05, what=f"order {order_id} stored")


@pytest.mark.parametrize("path", PATHS)
async def test_an_order_over_the_largest_total_is_refused_on_every_path(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: AsyncEngine, path: str
) -> None:
    pid = await new_product(products, stock=1000, price=HIGHEST_PRICE)
    answer = await place(orders, path, product_id=pid, quantity=101)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in answer.json()["errors"]] == ["quantity"]
    largest = await place(orders, path, product_id=pid, quantity=100)  # 999,999,999,999.00
    assert largest.status_code in (201, 202), largest.text
    stored = await wait_until_stored(database, pid, {largest.json()["id"]})
    assert [o["status"] for o in stored] == ["confirmed"]
    assert await stock_of(database, pid) == 900


async def test_a_sync_batch_with_a_refused_order_still_places_the_others(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: AsyncEngine
) -> None:
    costly = await new_product(products, stock=None, price=HIGHEST_PRICE)
    plain = await new_product(products, stock=50)
    # Sent at once, so that they are coalesced into the same transactions.
    answers = await asyncio.gather(
        *(
            place(orders, "sync", product_id=costly if i % 5 == 0 else plain, quantity=101)
            if i % 5 == 0
            else place(orders, "sync", product_id=plain)
            for i in range(60)
        )
    )
    refused = [a for i, a in enumerate(answers) if i % 5 == 0]
    placed = [a for i, a in enumerate(answers) if i % 5 != 0]
    assert {a.status_code for a in refused} == {422}
    assert {a.status_code for a in placed} == {201}, [
        a.text for a in placed if a.status_code != 201
    ]
    assert await stock_of(database, plain) == 50 - len(placed)
    assert await stored_orders(database, costly) == []


@pytest.mark.parametrize("path", ["kafka", "rabbitmq"])
async def test_an_accepted_command_that_cannot_be_placed_is_stored_rejected_with_its_reason(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, path: str
) -> None:
    pid = await new_product(products, stock=None, price=1)
    cheap = await place(orders, path, product_id=pid, quantity=101)  # intake learns the price
    assert cheap.status_code == 202, cheap.text
    assert (await _get_stored(orders, cheap.json()["id"]))["status"] == "confirmed"
    raised = await products.patch(f"/products/{pid}", json={"price": HIGHEST_PRICE})
    assert raised.status_code == 200
    # Intake still trusts the price it read, so it accepts: the consumer must not lose it.
    late = await place(orders, path, product_id=pid, quantity=101)
    assert late.status_code == 202, late.text
    stored = await _get_stored(orders, late.json()["id"])
    assert (stored["status"], stored["reason"]) == ("rejected", "total_too_large")
    assert stored["total_price"] is None


async def test_paging_oldest_first_returns_every_order_keyed_or_not_exactly_once(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: AsyncEngine
) -> None:
    pid = await new_product(products, stock=None)
    user = _user()
    placed: list[str] = []
    for i in range(24):  # one after another: each id is later than the one before
        key = f"page-{uuid.uuid4().hex}" if i % 2 else None
        answer = await place(orders, PATHS[i % 3], product_id=pid, user_id=user, key=key)
        assert answer.status_code in (201, 202), answer.text
        placed.append(answer.json()["id"])
    assert placed == sorted(placed, key=lambda i: uuid.UUID(i).bytes), "ids not time-ordered"
    await wait_until_stored(database, pid, set(placed))
    assert await all_pages(orders, f"/orders?user_id={user}&limit=5") == placed


async def test_placing_cancelling_and_editing_publish_versioned_product_events(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, settings: Settings
) -> None:
    pid = await new_product(products, stock=10)
    placed = await place(orders, "sync", product_id=pid, quantity=2)
    assert placed.status_code == 201
    async_placed = await place(orders, "kafka", product_id=pid, quantity=3)
    assert async_placed.status_code == 202
    await _get_stored(orders, async_placed.json()["id"])
    cancelled = await orders.post(f"/orders/{placed.json()['id']}/cancel")
    assert cancelled.status_code == 200
    edited = await products.patch(f"/products/{pid}", json={"price": 3})
    assert edited.status_code == 200

    def mine(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["data"]["id"] == pid]

    events = mine(
        await asyncio.to_thread(
            read_events,
            observer(settings),
            settings.kafka.product_events_topic,
            until=lambda evs: len(mine(evs)) >= 5,
            timeout=30,
        )
    )
    by_version = sorted(events, key=lambda e: e["version"])
    assert [(e["type"], e["version"]) for e in by_version] == [
        ("product.created", 1),
        ("product.stock_changed", 2),
        ("product.stock_changed", 3),
        ("product.stock_changed", 4),
        ("product.updated", 5),
    ]
    assert [e["data"].get("stock") for e in by_version] == [10, 8, 5, 7, 7]

    order_id = placed.json()["id"]
    order_events = [
        e
        for e in await asyncio.to_thread(
            read_events,
            observer(settings),
            settings.kafka.order_events_topic,
            until=lambda evs: sum(e["data"]["id"] == order_id for e in evs) >= 2,
            timeout=30,
        )
        if e["data"]["id"] == order_id
    ]
    assert sorted((e["type"], e["version"]) for e in order_events) == [
        ("order.cancelled", 2),
        ("order.confirmed", 1),
    ]
