"""The product store's SQL (`shop.products.repository.SqlProductStore`) on the real MariaDB:
what it writes reads back exactly, a unit of work commits all or nothing, its lock holds off a
second writer, pages follow their keyset and filters, the name search is served by the FULLTEXT
index as the domain defines it, a read the server stops at its time limit is a QueryTimeout,
and Idempotency-Keys are taken once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import jsonutil
from shop.errors import IdempotencyMismatch, QueryTimeout
from shop.events import Event
from shop.fields import CENT
from shop.products import domain
from shop.products.domain import ProductQuery, ProductView, Versioned
from shop.products.repository import KeyTaken, SqlProductStore
from shop.products.tables import product_outbox
from shop.settings import Settings
from shop.storage import idempotency
from shop.storage.database import Database

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(
    database: AsyncEngine, product_settings: Settings
) -> AsyncIterator[SqlProductStore]:
    db = Database.connect(product_settings)  # the product service's account, as in production
    products = product_settings.products
    yield SqlProductStore(
        db, query_seconds=products.query_seconds, searches=products.search_concurrency
    )
    await db.dispose()


async def _insert(store: SqlProductStore, **fields: Any) -> ProductView:
    now = jsonutil.utcnow()
    values = {"description": "", "price": Decimal("1.00"), "stock": None, **fields}
    values |= {"created_at": now, "updated_at": now}
    async with store.transaction() as tx:
        product_id = await tx.insert(values, version=domain.FIRST_VERSION)
    return ProductView(id=product_id, **values)


def _price(units: int) -> Decimal:
    return Decimal(units).quantize(CENT)  # as the API's Money type gives it


def _name() -> str:
    return f"store-{uuid.uuid4().hex}"


async def test_a_product_reads_back_exactly_as_written_at_its_first_version(
    store: SqlProductStore,
) -> None:
    written = await _insert(
        store, name=_name(), description="trailing space ", price=Decimal("19.90"), stock=0
    )
    assert await store.get(written.id) == written
    async with store.transaction() as tx:
        assert await tx.lock(written.id) == Versioned(written, domain.FIRST_VERSION)
    assert await store.get(written.id + 10**12) is None


async def test_an_update_writes_its_columns_and_version_and_a_delete_removes(
    store: SqlProductStore,
) -> None:
    product = await _insert(store, name=_name(), stock=5)
    async with store.transaction() as tx:
        current = await tx.lock(product.id)
        assert current is not None
        changes = {"price": Decimal("2.50")}
        after = current.changed(changes, jsonutil.utcnow())
        assert after is not None
        await tx.update(after, changes.keys())
    async with store.transaction() as tx:
        assert await tx.lock(product.id) == after
        await tx.delete(product.id)
    assert await store.get(product.id) is None
    async with store.transaction() as tx:
        assert await tx.lock(product.id) is None


async def test_a_unit_of_work_that_fails_leaves_no_product_and_no_event(
    store: SqlProductStore, database: AsyncEngine
) -> None:
    made: list[int] = []

    async def create_then_fail() -> None:
        async with store.transaction() as tx:
            now = jsonutil.utcnow()
            fields = {"name": _name(), "description": "", "price": Decimal(1), "stock": None}
            made.append(await tx.insert(fields | {"created_at": now, "updated_at": now}, version=1))
            await tx.add_event(Event("product", "product.created", str(made[0]), 1, {}))
            raise RuntimeError("the decision failed after the writes")

    with pytest.raises(RuntimeError):
        await create_then_fail()
    [product_id] = made
    assert await store.get(product_id) is None
    assert await _events(database, product_id) == []


async def test_events_are_recorded_with_the_unit_of_work_that_tells_of_them(
    store: SqlProductStore, database: AsyncEngine
) -> None:
    product = await _insert(store, name=_name())
    async with store.transaction() as tx:
        await tx.add_event(domain.created(product))
    [envelope] = await _events(database, product.id)
    assert (envelope["type"], envelope["version"]) == ("product.created", 1)
    assert envelope["data"] == jsonutil.loads(jsonutil.dumps(product))


async def _events(database: AsyncEngine, product_id: int) -> list[Any]:
    stmt = select(product_outbox.c.payload).where(product_outbox.c.event_key == str(product_id))
    async with database.connect() as conn:
        return [jsonutil.loads(payload) for payload in (await conn.execute(stmt)).scalars()]


async def test_a_locked_product_holds_off_a_second_writer_until_the_first_commits(
    store: SqlProductStore,
) -> None:
    product = await _insert(store, name=_name(), stock=3)
    second_saw: list[Versioned | None] = []

    async def second_writer() -> None:
        async with store.transaction() as tx:
            second_saw.append(await tx.lock(product.id))

    async with store.transaction() as tx:
        current = await tx.lock(product.id)
        assert current is not None
        waiting = asyncio.ensure_future(second_writer())
        await asyncio.sleep(0.3)
        assert not waiting.done(), "the second writer read past the first one's lock"
        after = current.changed({"stock": 2}, jsonutil.utcnow())
        assert after is not None
        await tx.update(after, ["stock"])
    await asyncio.wait_for(waiting, 10)
    assert second_saw == [after]


async def test_pages_follow_the_keyset_and_the_filters(store: SqlProductStore) -> None:
    prefix = _name()
    made = [await _insert(store, name=f"{prefix}-{n}", price=_price(n)) for n in range(1, 6)]
    made.append(await _insert(store, name=f"{prefix}-%_\\", price=_price(9)))

    async def ids(query: ProductQuery, after: int | None = None) -> list[int]:
        return [row["id"] for row in await store.page(query, after=after)]

    everything = [product.id for product in made]
    assert await ids(ProductQuery(name=prefix)) == everything
    assert await ids(ProductQuery(limit=2, name=prefix)) == everything[:3], "limit + 1 rows"
    assert await ids(ProductQuery(limit=2, name=prefix), after=everything[2]) == everything[3:6]
    priced = ProductQuery(name=prefix, min_price=Decimal(2), max_price=Decimal(4))
    assert await ids(priced) == everything[1:4], "both bounds are inclusive"
    for wildcard in ("-%", "-%_", "-%_\\"):  # each a literal: it finds the one product named so
        assert await ids(ProductQuery(name=prefix + wildcard)) == [made[-1].id]
    [row] = await store.page(ProductQuery(name=f"{prefix}-1"), after=None)
    assert jsonutil.dumps(row) == jsonutil.dumps(made[0])


async def test_an_idempotency_key_is_taken_once_and_recalled_for_its_request_only(
    store: SqlProductStore,
) -> None:
    key = idempotency.Key.of(uuid.uuid4().hex, scope="test", request={"a": 1})
    answer = idempotency.Answer(status=201, body=b'{"id":1}')
    async with store.transaction() as tx:
        assert await tx.recall(key) is None
        await tx.remember(key, answer)
    async with store.transaction() as tx:
        assert await tx.recall(key) == answer
    with pytest.raises(KeyTaken):
        async with store.transaction() as tx:
            await tx.remember(key, answer)
    other_request = idempotency.Key(key.key_hash, request_hash=b"\0" * 32)
    with pytest.raises(IdempotencyMismatch):
        async with store.transaction() as tx:
            await tx.recall(other_request)


NAMES = [
    "The Mug",
    "Coffee Mug",
    "Smug cat",
    "TV stand",
    "O'Brien mug",
    "under_score thing",
    "Théâtre",
    "mugs, cups",
]
SEARCHES = ["mug", "the mug", "tv stand", "brien", "o'brien", "score", "thing", "cups"]


async def test_the_name_search_finds_what_the_domain_says_it_matches(
    store: SqlProductStore,
) -> None:
    """Each name with a tag of its own, so the run's other products do not count: the index
    and the text check find exactly the products `domain.name_matches` matches (accents aside,
    which the server's collation ignores and Python does not)."""
    tag = uuid.uuid4().hex[:12]
    made = {name: await _insert(store, name=f"{name} {tag}") for name in NAMES}
    for search in SEARCHES:
        found = {row["id"] for row in await store.page(ProductQuery(name=search), after=None)}
        expected = {p.id for name, p in made.items() if domain.name_matches(name, search)}
        assert found & {p.id for p in made.values()} == expected, search
    accented = await store.page(ProductQuery(name=f"theatre {tag}"), after=None)
    assert [row["id"] for row in accented] == [made["Théâtre"].id]


async def test_a_read_the_server_stops_at_its_time_limit_is_a_query_timeout(
    database: AsyncEngine, product_settings: Settings
) -> None:
    db = Database.connect(product_settings)
    store = SqlProductStore(db, query_seconds=0.2, searches=1)
    try:
        with pytest.raises(QueryTimeout) as stopped:
            await store._rows(select(func.sleep(3)))
        assert stopped.value.status == 503
        assert stopped.value.headers["Retry-After"]
        made = await _insert(store, name=_name())
        assert await store.get(made.id) == made, "the connection is still good"
    finally:
        await db.dispose()
