"""The SQL order store on the real MariaDB: what a unit loads (the alias UNION, key claims, the
products under lock) and what it saves (orders, keys, aliases, the CASE stock update, events)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import jsonutil
from shop.orders import domain
from shop.orders.domain import Channel, Decision, KeyClaim, OrderRequest
from shop.orders.store import OrderUnit, SqlOrderStore
from shop.orders.tables import order_outbox, orders
from shop.products.tables import product_outbox, products
from shop.settings import Settings
from shop.storage.database import Database

pytestmark = pytest.mark.integration

PRICE = Decimal("3.10")


@pytest.fixture
async def store(database: AsyncEngine, settings: Settings) -> AsyncIterator[SqlOrderStore]:
    db = Database.connect(settings)
    yield SqlOrderStore(db)
    await db.dispose()


async def _product(database: AsyncEngine, stock: int | None) -> int:
    now = jsonutil.utcnow()
    async with database.begin() as conn:
        result = await conn.execute(
            insert(products).values(
                name="store test", price=PRICE, stock=stock, created_at=now, updated_at=now
            )
        )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


async def _stock(database: AsyncEngine, product_id: int) -> tuple[int | None, int]:
    async with database.connect() as conn:
        row = (
            await conn.execute(
                select(products.c.stock, products.c.version).where(products.c.id == product_id)
            )
        ).one()
    return row.stock, row.version


def _request(
    product_id: int,
    quantity: int = 1,
    *,
    channel: Channel = "kafka",
    key: bytes | None = None,
    user: int = 7,
    order_id: uuid.UUID | None = None,
) -> OrderRequest:
    return OrderRequest(order_id or uuid.uuid4(), user, product_id, quantity, channel, key)


async def _place(store: SqlOrderStore, requests: Sequence[OrderRequest]) -> Decision:
    async def work(unit: OrderUnit) -> Decision:
        known = await unit.known(requests)
        decision = domain.place_orders(requests, known, now=jsonutil.utcnow())
        await unit.save(decision)
        return decision

    return await store.transact(work)


async def test_a_batch_over_several_products_is_stored_with_one_case_update(
    store: SqlOrderStore, database: AsyncEngine
) -> None:
    tracked, other, untracked = [await _product(database, s) for s in (5, 9, None)]
    requests = [
        _request(tracked, 2),
        _request(other, 4),
        _request(tracked, 4),  # 3 left: rejected, out of stock
        _request(untracked, 1000),
        _request(tracked, 3),
    ]
    decision = await _place(store, requests)
    assert [o.status for o in decision.orders] == [
        "confirmed",
        "confirmed",
        "rejected",
        "confirmed",
        "confirmed",
    ]
    assert await _stock(database, tracked) == (0, 2)  # two orders took units: one change
    assert await _stock(database, other) == (5, 2)
    assert await _stock(database, untracked) == (None, 1)
    for request, placed in zip(requests, decision.orders, strict=True):
        assert await store.get(request.order_id) == placed
    async with database.connect() as conn:
        [payload] = (
            await conn.execute(
                select(order_outbox.c.payload).where(
                    order_outbox.c.payload.contains(str(requests[0].order_id).encode())
                )
            )
        ).scalars()
        stock_events = await conn.scalar(
            select(func.count())
            .select_from(product_outbox)
            .where(product_outbox.c.payload.contains(f'"id":{tracked},'.encode()))
        )
    # The batch's order events share one row; the stock events of its products another.
    assert all(str(r.order_id).encode() in payload for r in requests)
    assert stock_events == 1


async def test_an_order_is_found_under_its_own_id_and_under_its_aliases(
    store: SqlOrderStore, database: AsyncEngine
) -> None:
    product = await _product(database, 10)
    key = uuid.uuid4().bytes * 2
    first, twin = _request(product, 2, key=key), _request(product, 2, key=key)
    decision = await _place(store, [first, twin])
    assert decision.aliases == {twin.order_id: first.order_id}
    stored = await store.get(first.order_id)
    assert stored is not None
    assert await store.get(twin.order_id) == stored

    async def load(unit: OrderUnit) -> domain.Known:
        return await unit.known([first, twin, _request(product)])

    known = await store.transact(load)
    assert known.orders == {first.order_id: stored, twin.order_id: stored}
    assert known.claims == {key: KeyClaim(first.order_id, product, 2)}
    assert await _stock(database, product) == (8, 2)


async def test_the_first_claim_of_a_key_stays_and_names_the_order_stored_later(
    store: SqlOrderStore, database: AsyncEngine
) -> None:
    product = await _product(database, 10)
    key = uuid.uuid4().bytes * 2
    claimed = KeyClaim(uuid.uuid4(), product, 2)
    assert await store.claim_key(key, claimed) == claimed
    assert await store.claim_key(key, KeyClaim(uuid.uuid4(), product, 3)) == claimed

    retry = _request(product, 2, key=key)  # intake could not claim: an id of its own

    async def load(unit: OrderUnit) -> domain.Known:
        return await unit.known([retry])

    known = await store.transact(load)
    assert known.claims == {key: claimed}
    assert known.orders == {}  # the claimed order is not stored yet

    await _place(store, [retry])
    stored = await store.get(claimed.order_id)
    assert stored is not None
    assert stored.status == "confirmed"
    assert await store.get(retry.order_id) == stored  # aliased to the claimed id
    known = await store.transact(load)
    assert known.claims == {key: claimed}
    assert known.orders == {retry.order_id: stored, claimed.order_id: stored}


async def test_a_cancel_locks_the_order_and_gives_its_stock_back(
    store: SqlOrderStore, database: AsyncEngine
) -> None:
    product = await _product(database, 6)
    request = _request(product, 4, channel="sync")
    await _place(store, [request])

    async def cancel(order_id: uuid.UUID) -> Decision:
        async def work(unit: OrderUnit) -> Decision:
            order, locked = await unit.lock_order(order_id)
            now = jsonutil.utcnow()
            decision = domain.cancel_order(order_id, order, locked, owner=None, now=now)
            await unit.save(decision)
            return decision

        return await store.transact(work)

    decision = await cancel(request.order_id)
    assert await store.get(request.order_id) == decision.changed[0]
    assert decision.changed[0].status == "cancelled"
    assert decision.changed[0].version == 2
    assert await _stock(database, product) == (6, 3)

    async def lock_unknown(unit: OrderUnit) -> tuple[object, object]:
        return await unit.lock_order(uuid.uuid4())

    assert await store.transact(lock_unknown) == (None, None)


async def test_a_second_batch_waits_for_the_first_and_never_oversells(
    store: SqlOrderStore, database: AsyncEngine
) -> None:
    product = await _product(database, 3)
    first_locked, first_may_save = asyncio.Event(), asyncio.Event()

    async def first(unit: OrderUnit) -> Decision:
        requests = [_request(product, 2)]
        known = await unit.known(requests)
        first_locked.set()
        await first_may_save.wait()
        decision = domain.place_orders(requests, known, now=jsonutil.utcnow())
        await unit.save(decision)
        return decision

    holding = asyncio.create_task(store.transact(first))
    await first_locked.wait()
    waiting = asyncio.create_task(_place(store, [_request(product, 2)]))
    done, _ = await asyncio.wait([waiting], timeout=0.5)
    assert not done  # the product's row is locked until the first batch commits
    first_may_save.set()
    assert (await holding).orders[0].status == "confirmed"
    second = (await waiting).orders[0]
    assert (second.status, second.reason) == ("rejected", domain.OUT_OF_STOCK)
    assert await _stock(database, product) == (1, 2)


async def test_a_unit_that_fails_stores_nothing_and_a_twins_order_id_is_refused(
    store: SqlOrderStore, database: AsyncEngine
) -> None:
    product = await _product(database, 5)
    request = _request(product, 1)

    async def fails(unit: OrderUnit) -> None:
        await unit.known([request])
        raise RuntimeError("the decision failed")

    with pytest.raises(RuntimeError):
        await store.transact(fails)
    assert await store.get(request.order_id) is None

    twin = domain.place_orders([request], domain.Known(), now=jsonutil.utcnow())

    async def duplicate(unit: OrderUnit) -> None:
        await unit.save(twin)

    await _place(store, [request])
    with pytest.raises(IntegrityError):
        await store.transact(duplicate)
    assert await _stock(database, product) == (4, 2)


async def test_a_page_filters_by_user_and_status_after_the_cursor(
    store: SqlOrderStore, database: AsyncEngine
) -> None:
    product = await _product(database, 2)
    user = random.randrange(10**12, 10**15)
    await _place(store, [_request(product, 1, user=user) for _ in range(4)])
    async with database.connect() as conn:
        mine = (
            await conn.execute(select(orders.c.id).where(orders.c.user_id == user).order_by("id"))
        ).scalars()
        ids = [uuid.UUID(bytes=i) for i in mine]
    page = await store.page(limit=10, after=None, user_id=user, status=None)
    assert [o.id for o in page] == ids
    confirmed = await store.page(limit=10, after=None, user_id=user, status="confirmed")
    assert len(confirmed) == 2
    rest = await store.page(limit=10, after=ids[1], user_id=user, status=None)
    assert [o.id for o in rest] == ids[2:]
