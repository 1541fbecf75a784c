"""The catalogue's storage: the port the product service is given, and its SQL.

`ProductStore` is what `shop.products.service` asks of storage (an in-memory fake stands in for
it in the unit tests); `SqlProductStore` answers it with SQLAlchemy Core on MariaDB/MySQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any, Protocol

from sqlalchemy import Select, delete, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from shop.errors import QueryTimeout, Unavailable
from shop.events import Event
from shop.products.domain import ProductQuery, ProductView, Versioned, search_words
from shop.products.tables import product_idempotency, product_outbox, products
from shop.storage import idempotency, outbox
from shop.storage.database import STATEMENT_SECONDS, STATEMENT_TIMEOUT, Database, error_code

# The row shape is the domain's ProductView: one column per field.
_KEYS = tuple(f.name for f in dataclasses.fields(ProductView))
_COLUMNS = tuple(products.c[name] for name in _KEYS)


class KeyTaken(Exception):
    """A twin request with the same Idempotency-Key stored its answer first."""


class ProductWrites(Protocol):
    """The catalogue inside one unit of work, which commits when its block finishes."""

    async def recall(self, key: idempotency.Key) -> idempotency.Answer | None: ...

    async def remember(self, key: idempotency.Key, answer: idempotency.Answer) -> None:
        """Store the answer given under `key`; raises KeyTaken if a twin stored one first."""

    async def insert(self, fields: Mapping[str, Any], *, version: int) -> int:
        """Add a product; its new id."""

    async def lock(self, product_id: int) -> Versioned | None:
        """The product, which no one else changes until this unit of work ends; None if none."""

    async def update(self, after: Versioned, changed: Iterable[str]) -> None:
        """Write the `changed` fields of `after`, its update time and its version."""

    async def delete(self, product_id: int) -> None: ...

    async def add_event(self, event: Event) -> None:
        """Record `event` in the outbox, committed with the change it tells of."""


class ProductStore(Protocol):
    """Units of work on the catalogue, and its reads."""

    def transaction(self) -> AbstractAsyncContextManager[ProductWrites]: ...

    async def get(self, product_id: int) -> ProductView | None: ...

    async def page(self, query: ProductQuery, *, after: int | None) -> list[dict[str, Any]]:
        """Up to `query.limit + 1` products after id `after`, in id order, as JSON-ready dicts.

        Dicts, not views: building and encoding a page of 1000 dataclasses took twice as long.
        """


class SqlProductStore:
    """The catalogue in the `products` table, its outbox and its idempotency records.

    Every read carries a time limit the server enforces (`query_seconds`: a query the server
    stops answers 503), and at most `searches` filtered pages are read at once (the others wait
    for a place up to the database timeout, then 503): a flood of searches, however costly,
    leaves the rest of the connection pool to the reads by id and the plain pages.
    """

    def __init__(self, db: Database, *, query_seconds: float, searches: int) -> None:
        self._db = db
        self._query_seconds = query_seconds
        self._bounded = {STATEMENT_SECONDS: query_seconds}
        self._searches = asyncio.Semaphore(searches)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[ProductWrites]:
        async with self._db.transaction() as conn:
            yield _SqlWrites(conn)

    async def get(self, product_id: int) -> ProductView | None:
        rows = await self._rows(select(*_COLUMNS).where(products.c.id == product_id))
        return ProductView(*rows[0]) if rows else None

    async def page(self, query: ProductQuery, *, after: int | None) -> list[dict[str, Any]]:
        stmt = select(*_COLUMNS).order_by(products.c.id).limit(query.limit + 1)
        if after is not None:
            stmt = stmt.where(products.c.id > after)
        if query.name is not None:
            # The index finds the products whose words start with the searched words; of
            # those, the ones that hold the searched text as it was written.
            words = " ".join(f"+{word}*" for word in search_words(query.name))
            stmt = stmt.where(products.c.name.match(words))
            stmt = stmt.where(products.c.name.like(f"%{_escape_like(query.name)}%", escape="\\"))
        if query.min_price is not None:
            stmt = stmt.where(products.c.price >= query.min_price)
        if query.max_price is not None:
            stmt = stmt.where(products.c.price <= query.max_price)
        async with self._search_place() if query.is_search() else nullcontext():
            rows = await self._rows(stmt)
        # Timestamps stay naive UTC: jsonutil writes them with a Z.
        return [dict(zip(_KEYS, row, strict=True)) for row in rows]

    async def _rows(self, stmt: Select[Any]) -> list[Any]:
        """The rows of a read, which the server stops after `query_seconds`."""
        try:
            async with self._db.read() as conn:
                return list(await conn.execute(stmt, execution_options=self._bounded))
        except DBAPIError as exc:
            if error_code(exc) not in STATEMENT_TIMEOUT:
                raise
        raise QueryTimeout(
            f"The catalogue query took longer than {self._query_seconds:g} s and was stopped; "
            "narrow the search, or retry later.",
            retry_after=2,
        )

    @asynccontextmanager
    async def _search_place(self) -> AsyncIterator[None]:
        """One of the places for a search, waited for up to the database timeout."""
        try:
            async with asyncio.timeout(self._db.timeout):
                await self._searches.acquire()
        except TimeoutError:
            busy = "Too many searches are running; retry shortly."
            raise Unavailable(busy, retry_after=1) from None
        try:
            yield
        finally:
            self._searches.release()


class _SqlWrites:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def recall(self, key: idempotency.Key) -> idempotency.Answer | None:
        return await idempotency.recall(self._conn, product_idempotency, key)

    async def remember(self, key: idempotency.Key, answer: idempotency.Answer) -> None:
        try:
            await idempotency.remember(self._conn, product_idempotency, key, answer)
        except IntegrityError as exc:
            raise KeyTaken from exc

    async def insert(self, fields: Mapping[str, Any], *, version: int) -> int:
        result = await self._conn.execute(products.insert().values(**fields, version=version))
        return int(result.lastrowid)

    async def lock(self, product_id: int) -> Versioned | None:
        stmt = select(*_COLUMNS, products.c.version).where(products.c.id == product_id)
        row = (await self._conn.execute(stmt.with_for_update())).first()
        return None if row is None else Versioned(ProductView(*row[:-1]), row[-1])

    async def update(self, after: Versioned, changed: Iterable[str]) -> None:
        product = after.product
        values = {name: getattr(product, name) for name in (*changed, "updated_at")}
        stmt = update(products).where(products.c.id == product.id)
        await self._conn.execute(stmt.values(**values, version=after.version))

    async def delete(self, product_id: int) -> None:
        await self._conn.execute(delete(products).where(products.c.id == product_id))

    async def add_event(self, event: Event) -> None:
        await outbox.add_events(self._conn, product_outbox, [event])


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
