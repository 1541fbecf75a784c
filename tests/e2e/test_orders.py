"""Orders on all three paths against the real MariaDB, Kafka and RabbitMQ."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from shop.settings import Settings
from tests.e2e.orders_support import (
    PATHS,
    Tally,
    all_pages,
    assert_stock_adds_up,
    new_product,
    order_count,
    order_url,
    place,
    stock_of,
    stored_orders,
    wait_until_stored,
)
from tests.support import eventually, observer, read_events, topic_size

pytestmark = pytest.mark.e2e


async def test_sync_order_reserves_stock_and_confirms_at_the_current_price(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: Any
) -> None:
    pid = await new_product(products, stock=5, price=3.3)
    response = await place(orders, "sync", product_id=pid, quantity=2, user_id=7)
    assert response.status_code == 201, response.text
    order = response.json()
    assert response.headers["location"] == f"/orders/{order['id']}"
    assert order["status"] == "confirmed"
    assert order["channel"] == "sync"
    assert '"unit_price":3.30' in response.text
    assert '"total_price":6.60' in response.text
    assert await stock_of(database, pid) == 3
    assert (await orders.get(f"/orders/{order['id']}")).json() == order


async def test_sync_order_beyond_stock_is_409_and_writes_nothing(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: Any
) -> None:
    pid = await new_product(products, stock=1)
    response = await place(orders, "sync", product_id=pid, quantity=2)
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert await stock_of(database, pid) == 1
    assert await stored_orders(database, pid) == []


async def test_sync_order_for_unknown_product_is_422_naming_product_id(
    orders: httpx.AsyncClient,
) -> None:
    response = await place(orders, "sync", product_id=2**40)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "product_id"


async def test_untracked_stock_always_confirms(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: Any
) -> None:
    pid = await new_product(products, stock=None)
    answers = [await place(orders, path, product_id=pid, quantity=1000) for path in PATHS]
    assert [a.status_code for a in answers] == [201, 202, 202]
    stored = await wait_until_stored(database, pid, {a.json()["id"] for a in answers})
    assert {o["status"] for o in stored} == {"confirmed"}
    assert await stock_of(database, pid) is None


async def test_an_order_above_the_largest_quantity_is_refused_on_every_path(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, settings: Settings, database: Any
) -> None:
    pid = await new_product(products, stock=None)
    most = settings.orders.max_quantity
    for path in PATHS:
        refused = await place(orders, path, product_id=pid, quantity=most + 1)
        assert refused.status_code == 422, (path, refused.text)
        assert refused.json()["errors"][0]["field"] == "quantity"
    allowed = await place(orders, "sync", product_id=pid, quantity=most)
    assert allowed.status_code == 201
    stored = await wait_until_stored(database, pid, {allowed.json()["id"]})
    assert [o["quantity"] for o in stored] == [most]  # the refused ones left nothing


@pytest.mark.parametrize("path", ["kafka", "rabbitmq"])
async def test_async_order_is_accepted_then_stored(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: Any, path: str
) -> None:
    pid = await new_product(products, stock=1)
    first = await place(orders, path, product_id=pid)
    second = await place(orders, path, product_id=pid)
    unknown = await place(orders, path, product_id=2**41)
    for answer in (first, second, unknown):
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["status"] == "pending"
        assert body["channel"] == path
        assert answer.headers["location"] == f"/orders/{body['id']}"

    async def settled(answer: httpx.Response) -> dict[str, Any]:
        async def stored() -> dict[str, Any] | None:
            got = await orders.get(f"/orders/{answer.json()['id']}")
            return got.json() if got.status_code == 200 else None

        return await eventually(stored, timeout=30, what=f"{path} order stored")

    a, b, c = [await settled(x) for x in (first, second, unknown)]
    assert (a["status"], a["reason"]) == ("confirmed", None)
    assert (b["status"], b["reason"]) == ("rejected", "out_of_stock")
    assert (c["status"], c["reason"]) == ("rejected", "unknown_product")
    assert b["unit_price"] is None
    assert c["total_price"] is None
    assert await stock_of(database, pid) == 0


async def test_cancel_releases_stock_once(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: Any
) -> None:
    pid = await new_product(products, stock=4)
    order = (await place(orders, "sync", product_id=pid, quantity=3)).json()
    assert await stock_of(database, pid) == 1
    cancelled = await orders.post(f"/orders/{order['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert await stock_of(database, pid) == 4
    again = await orders.post(f"/orders/{order['id']}/cancel")
    assert again.status_code == 409
    assert await stock_of(database, pid) == 4
    unknown = await orders.post(f"/orders/{uuid.uuid4()}/cancel")
    assert unknown.status_code == 404


async def test_cancelling_a_rejected_order_is_409(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: Any
) -> None:
    pid = await new_product(products, stock=0)
    accepted = (await place(orders, "rabbitmq", product_id=pid)).json()
    await wait_until_stored(database, pid, {accepted["id"]})
    assert (await orders.post(f"/orders/{accepted['id']}/cancel")).status_code == 409


async def test_order_events_are_published(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: Any, settings: Settings
) -> None:
    pid = await new_product(products, stock=1)
    confirmed = (await place(orders, "sync", product_id=pid)).json()
    rejected = (await place(orders, "kafka", product_id=pid)).json()
    await wait_until_stored(database, pid, {rejected["id"]})
    await orders.post(f"/orders/{confirmed['id']}/cancel")
    ids = {confirmed["id"], rejected["id"]}

    def mine(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [(e["type"], e["data"]["id"]) for e in events if e["data"]["id"] in ids]

    events = await asyncio.to_thread(
        read_events,
        observer(settings),
        settings.kafka.order_events_topic,
        until=lambda evs: len(mine(evs)) >= 3,
        timeout=30,
    )
    assert sorted(mine(events)) == sorted(
        [
            ("order.confirmed", confirmed["id"]),
            ("order.rejected", rejected["id"]),
            ("order.cancelled", confirmed["id"]),
        ]
    )


async def test_list_orders_filters_and_pages(
    products: httpx.AsyncClient, orders: httpx.AsyncClient
) -> None:
    pid = await new_product(products, stock=None)
    user = int(uuid.uuid4().int % 10**12) + 1
    made = [
        (await place(orders, "sync", product_id=pid, user_id=user)).json()["id"] for _ in range(5)
    ]
    assert await all_pages(orders, f"/orders?user_id={user}&status=confirmed&limit=2") == made
    assert (await orders.get(f"/orders?user_id={user}&status=rejected")).json() == []


async def test_no_oversell_under_400_concurrent_orders_on_all_paths(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: Any
) -> None:
    pid = await new_product(products, stock=50)
    paths = [PATHS[i % 3] for i in range(400)]
    answers = await asyncio.gather(
        *(place(orders, p, product_id=pid, user_id=i + 1) for i, p in enumerate(paths))
    )
    tally = Tally()
    for path, answer in zip(paths, answers, strict=True):
        tally.record(path, answer)
    assert tally.other == []
    stored = await wait_until_stored(database, pid, set(tally.accepted))
    confirmed = [o for o in stored if o["status"] == "confirmed"]
    assert len(confirmed) == 50
    assert await stock_of(database, pid) == 0
    assert all(o["reason"] == "out_of_stock" for o in stored if o["status"] == "rejected")
    sync_confirmed = sum(1 for o in confirmed if o["channel"] == "sync")
    assert tally.refused == paths.count("sync") - sync_confirmed
    assert len(stored) == len(tally.accepted)
    await assert_stock_adds_up(database, pid, 50)


async def test_burst_every_accepted_order_is_stored_exactly_once(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: Any
) -> None:
    tracked = await new_product(products, stock=600)
    untracked = await new_product(products, stock=None)
    plan = [(PATHS[i % 3], tracked if i % 2 else untracked) for i in range(3000)]
    tally_by_product: dict[int, Tally] = {tracked: Tally(), untracked: Tally()}
    gate = asyncio.Semaphore(64)

    async def one(i: int, path: str, pid: int) -> None:
        async with gate:
            answer = await place(orders, path, product_id=pid, user_id=i + 1)
        tally_by_product[pid].record(path, answer)

    await asyncio.gather(*(one(i, path, pid) for i, (path, pid) in enumerate(plan)))
    for pid, tally in tally_by_product.items():
        assert tally.other == []
        stored = await wait_until_stored(database, pid, set(tally.accepted), timeout=120)
        ids = [o["id"] for o in stored]
        assert len(ids) == len(set(ids)) == len(tally.accepted), "lost or doubled orders"
        channels = {o["id"]: o["channel"] for o in stored}
        assert all(channels[i] == p for i, p in tally.accepted.items())
    await assert_stock_adds_up(database, tracked, 600)


@pytest.mark.parametrize("path", PATHS)
async def test_replayed_request_with_a_key_returns_the_first_answer(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: Any, path: str
) -> None:
    pid = await new_product(products, stock=10)
    key = uuid.uuid4().hex
    first = await place(orders, path, product_id=pid, quantity=2, key=key)
    again = await place(orders, path, product_id=pid, quantity=2, key=key)
    assert first.status_code == again.status_code
    assert first.json()["id"] == again.json()["id"]
    if path == "sync":
        assert again.json() == first.json()
        changed = await place(orders, path, product_id=pid, quantity=3, key=key)
        assert changed.status_code == 422
    stored = await wait_until_stored(database, pid, {first.json()["id"]})
    assert len(stored) == 1
    assert await stock_of(database, pid) == 8


async def test_one_key_through_every_path_at_once_makes_one_order(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: Any
) -> None:
    pid = await new_product(products, stock=100)
    key = uuid.uuid4().hex
    answers = await asyncio.gather(
        *(place(orders, PATHS[i % 3], product_id=pid, key=key) for i in range(30))
    )
    assert {a.status_code for a in answers} <= {201, 202}
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1
    await wait_until_stored(database, pid, ids)

    async def settled() -> bool:  # every queued twin has been consumed and skipped
        return (await stock_of(database, pid)) == 99 and len(
            await stored_orders(database, pid)
        ) == 1

    await eventually(settled, timeout=30, what="twins collapsed into one order")
    # Sentinels behind the twins (same product: same Kafka partition; one RabbitMQ queue):
    # once they are stored, every queued twin has been consumed, and skipped.
    sentinels = {
        (await place(orders, path, product_id=pid, user_id=2)).json()["id"]
        for path in ("kafka", "rabbitmq")
    }
    stored = await wait_until_stored(database, pid, sentinels)
    assert len(stored) == 3
    assert await stock_of(database, pid) == 97


async def test_many_keys_each_through_every_path_at_once_make_one_order_each(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, database: Any
) -> None:
    # Many keys at once widen the races between a sync batch, intake's key claims and the
    # consumers storing the claimed orders (a sync twin can meet two committed twins in a row).
    pid = await new_product(products, stock=1000)
    keys = [uuid.uuid4().hex for _ in range(20)]
    answers = await asyncio.gather(
        *(place(orders, PATHS[i % 3], product_id=pid, key=k) for k in keys for i in range(9))
    )
    assert [a.text for a in answers if a.status_code not in (201, 202)] == []
    per_key = [{a.json()["id"] for a in answers[9 * n : 9 * n + 9]} for n in range(len(keys))]
    assert all(len(ids) == 1 for ids in per_key)
    ids = set().union(*per_key)
    stored = await wait_until_stored(database, pid, ids)

    async def settled() -> bool:  # every queued twin has been consumed and skipped
        return (await stock_of(database, pid)) == 1000 - len(keys) and len(
            await stored_orders(database, pid)
        ) == len(keys)

    await eventually(settled, timeout=30, what="twins collapsed into one order per key")
    assert {o["id"] for o in stored} == ids


async def test_the_same_key_from_two_users_makes_two_orders(
    products: httpx.AsyncClient, orders: httpx.AsyncClient
) -> None:
    pid = await new_product(products, stock=None)
    key = uuid.uuid4().hex
    a = await place(orders, "sync", product_id=pid, user_id=1, key=key)
    b = await place(orders, "sync", product_id=pid, user_id=2, key=key)
    assert a.json()["id"] != b.json()["id"]


BAD_ORDERS: list[tuple[str, bytes, int, str]] = [
    ("quantity zero", b'{"user_id":1,"product_id":1,"quantity":0}', 422, "quantity"),
    ("negative quantity", b'{"user_id":1,"product_id":1,"quantity":-3}', 422, "quantity"),
    ("fractional quantity", b'{"user_id":1,"product_id":1,"quantity":1.5}', 422, "quantity"),
    ("quantity as string", b'{"user_id":1,"product_id":1,"quantity":"2"}', 422, "quantity"),
    ("huge quantity", b'{"user_id":1,"product_id":1,"quantity":10000000}', 422, "quantity"),
    ("missing user", b'{"product_id":1,"quantity":1}', 422, "user_id"),
    ("user zero", b'{"user_id":0,"product_id":1,"quantity":1}', 422, "user_id"),
    ("product as bool", b'{"user_id":1,"product_id":true,"quantity":1}', 422, "product_id"),
    (
        "id beyond 64 bits",
        b'{"user_id":1,"product_id":99999999999999999999,"quantity":1}',
        422,
        "product_id",
    ),
    ("unknown field", b'{"user_id":1,"product_id":1,"quantity":1,"x":1}', 422, "x"),
    ("array", b"[]", 422, "body"),
    ("invalid JSON", b'{"user_id":', 400, "JSON"),
    ("1 MB body", b'{"user_id":1,"pad":"' + b"x" * 1_048_576 + b'"}', 413, "larger"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "named"), BAD_ORDERS, ids=[c[0] for c in BAD_ORDERS]
)
async def test_bad_orders_are_refused_and_send_nothing(
    orders: httpx.AsyncClient,
    products: httpx.AsyncClient,
    database: Any,
    settings: Settings,
    case: str,
    body: bytes,
    status: int,
    named: str,
) -> None:
    before_rows = await order_count(database)
    before_kafka = await asyncio.to_thread(topic_size, observer(settings), settings.kafka.topic)
    for path in PATHS:
        response = await orders.post(
            order_url(path), content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == status, (case, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert named in response.text
    # A valid order sent after the bad ones is stored only after anything queued before it.
    pid = await new_product(products, stock=None)
    sentinel = (await place(orders, "rabbitmq", product_id=pid)).json()["id"]
    await wait_until_stored(database, pid, {sentinel})
    assert await order_count(database) == before_rows + 1
    after_kafka = await asyncio.to_thread(topic_size, observer(settings), settings.kafka.topic)
    assert after_kafka == before_kafka


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("GET", "/orders/not-a-uuid", 422),
        ("GET", f"/orders/{uuid.UUID(int=1)}", 404),
        ("POST", "/orders/not-a-uuid/cancel", 422),
        ("GET", "/orders?status=shipped", 422),
        ("GET", "/orders?user_id=-1", 422),
        ("GET", "/orders?cursor=zzz", 422),
        ("GET", "/orders?limit=5000", 422),
        ("PUT", "/orders/sync", 405),
    ],
)
async def test_bad_order_urls_get_problems_not_5xx(
    orders: httpx.AsyncClient, method: str, url: str, status: int
) -> None:
    response = await orders.request(method, url)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
