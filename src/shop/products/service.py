"""Product use cases; each owns its transaction and writes its event to the outbox."""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from shop import jsonutil
from shop.errors import InvalidInput, NotFound
from shop.events import Event
from shop.products.models import ProductCreate, ProductPatch
from shop.products.tables import product_idempotency, product_outbox, products
from shop.storage import idempotency, outbox
from shop.storage.database import Database
from shop.storage.write_counter import Generation

_COLUMNS = (
    products.c.id,
    products.c.name,
    products.c.description,
    products.c.price,
    products.c.stock,
    products.c.created_at,
    products.c.updated_at,
)


@dataclass(frozen=True, slots=True)
class ProductQuery:
    """A page of the catalogue: keyset `cursor`, optional name substring and price range."""

    limit: int = 100
    cursor: str | None = None
    name: str | None = None
    min_price: Decimal | None = None
    max_price: Decimal | None = None


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"p{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("p") or not raw[1:].isdigit():
            raise ValueError(raw)
        return int(raw[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("not a cursor this service issued", field="cursor") from None


_KEYS = tuple(str(column.name) for column in _COLUMNS)  # plain str: orjson wants no subclass


def _as_dict(row: Row[*tuple[Any, ...]]) -> dict[str, Any]:
    # Timestamps stay naive UTC: jsonutil writes them with a Z.
    return dict(zip(_KEYS, row, strict=True))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ProductService:
    """The catalogue: every change is committed together with its outbox event."""

    def __init__(
        self,
        db: Database,
        *,
        on_event: Callable[[], None],
        list_cache_seconds: float = 0.0,
        list_cache_bytes: int = 16 * 1024 * 1024,
        writes: Generation | None = None,
    ) -> None:
        self._db = db
        self._on_event = on_event
        self._list_cache_seconds = list_cache_seconds
        # Bumped after every write through this service, in any of its worker processes.
        self._writes = writes or Generation()
        # Per query: (expires, writes counter when the load began, body, next cursor), oldest
        # first (every page lives as long, so the oldest expires first); at most
        # `list_cache_bytes` of bodies in all.
        self._pages: collections.OrderedDict[ProductQuery, tuple[float, int, bytes, str | None]]
        self._pages = collections.OrderedDict()
        self._cache_bytes = list_cache_bytes
        self._cached_bytes = 0
        self._loading: dict[ProductQuery, tuple[int, asyncio.Future[tuple[bytes, str | None]]]] = {}

    async def create_product(
        self, data: ProductCreate, *, owner: str, idempotency_key: str | None = None
    ) -> idempotency.Answer:
        """Insert a product and its `product.created` event; replays a known key's answer.

        Keys are `owner`'s (the token's subject): two callers never share one.
        """
        key = None
        if idempotency_key is not None:
            key = idempotency.Key.of(
                idempotency_key,
                scope=f"products\x1f{len(owner)}:{owner}",
                request=data.model_dump(mode="json"),
            )
        try:
            answer = await self._create_once(data, key)
        except IntegrityError:
            if key is None:
                raise
            # A twin request with the same key committed first: answer as it was answered.
            async with self._db.transaction() as conn:
                remembered = await idempotency.recall(conn, product_idempotency, key)
            if remembered is None:
                raise
            return remembered
        self._changed()
        return answer

    async def _create_once(
        self, data: ProductCreate, key: idempotency.Key | None
    ) -> idempotency.Answer:
        now = jsonutil.utcnow()
        async with self._db.transaction() as conn:
            if key is not None:
                remembered = await idempotency.recall(conn, product_idempotency, key)
                if remembered is not None:
                    return remembered
            fields = {**data.model_dump(), "created_at": now, "updated_at": now}
            result = await conn.execute(products.insert().values(**fields, version=1))
            product = {"id": result.lastrowid, **fields}
            await _emit(conn, "product.created", product["id"], 1, product)
            answer = idempotency.Answer(status=201, body=jsonutil.dumps(product))
            if key is not None:
                await idempotency.remember(conn, product_idempotency, key, answer)
        return answer

    async def get_product(self, product_id: int) -> dict[str, Any]:
        """One product, or NotFound."""
        async with self._db.read() as conn:
            row = (await conn.execute(select(*_COLUMNS).where(products.c.id == product_id))).first()
        if row is None:
            raise NotFound(f"No product with id {product_id}.")
        return _as_dict(row)

    async def list_products(self, query: ProductQuery) -> tuple[list[dict[str, Any]], str | None]:
        """A page of products in id order, and the cursor of the next page if there is one."""
        stmt = select(*_COLUMNS).order_by(products.c.id).limit(query.limit + 1)
        if query.cursor is not None:
            stmt = stmt.where(products.c.id > decode_cursor(query.cursor))
        if query.name:
            stmt = stmt.where(products.c.name.like(f"%{_escape_like(query.name)}%", escape="\\"))
        if query.min_price is not None:
            stmt = stmt.where(products.c.price >= query.min_price)
        if query.max_price is not None:
            stmt = stmt.where(products.c.price <= query.max_price)
        async with self._db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        page = [_as_dict(row) for row in rows[: query.limit]]
        next_cursor = encode_cursor(page[-1]["id"]) if len(rows) > query.limit else None
        return page, next_cursor

    async def list_products_json(self, query: ProductQuery) -> tuple[bytes, str | None]:
        """A page as JSON bytes, from a short-lived per-process cache when it is fresh.

        A write through this service (in any of its worker processes) makes every page cached
        or being loaded before it stale; another service's writes (orders taking stock) show
        within `list_cache_seconds`. When a page expires, the requests that want it meanwhile
        share one load instead of each querying the database at once (a stampede every second
        that showed as multi-second p99 at 400 and 800 connections).
        """
        writes = self._writes.value()
        cached = self._pages.get(query)
        if cached is not None and cached[0] > time.monotonic() and cached[1] == writes:
            return cached[2], cached[3]
        if self._list_cache_seconds <= 0:
            return await self._render(query)
        loading = self._loading.get(query)
        if loading is None or loading[0] != writes:
            future = asyncio.ensure_future(self._load(query, writes))
            future.add_done_callback(_retrieved)
            loading = self._loading[query] = (writes, future)
        # Shielded: a caller that goes away does not cancel the load the others wait for.
        return await asyncio.shield(loading[1])

    async def _load(self, query: ProductQuery, writes: int) -> tuple[bytes, str | None]:
        try:
            body, next_cursor = await self._render(query)
        finally:
            current = self._loading.get(query)
            if current is not None and current[0] == writes:
                del self._loading[query]
        if self._writes.value() == writes:  # no write since the load began: cache it
            self._cache(
                query, (time.monotonic() + self._list_cache_seconds, writes, body, next_cursor)
            )
        return body, next_cursor

    def _cache(self, query: ProductQuery, page: tuple[float, int, bytes, str | None]) -> None:
        """Keep `page`; first let go of the expired pages, then of the oldest while the bodies
        would exceed the byte budget (a page larger than the whole budget is not kept)."""
        self._forget(query)
        now = time.monotonic()
        while self._pages and next(iter(self._pages.values()))[0] <= now:
            self._forget(next(iter(self._pages)))
        size = len(page[2])
        if size > self._cache_bytes:
            return
        while self._pages and self._cached_bytes + size > self._cache_bytes:
            self._forget(next(iter(self._pages)))
        self._pages[query] = page
        self._cached_bytes += size

    def _forget(self, query: ProductQuery) -> None:
        page = self._pages.pop(query, None)
        if page is not None:
            self._cached_bytes -= len(page[2])

    async def _render(self, query: ProductQuery) -> tuple[bytes, str | None]:
        page, next_cursor = await self.list_products(query)
        return jsonutil.dumps(page), next_cursor

    def _changed(self) -> None:
        # Later reads, in any worker, must see this write: the pages cached and the loads
        # begun before it are stale from now on.
        self._writes.bump()
        self._pages.clear()
        self._cached_bytes = 0
        self._on_event()

    async def update_product(self, product_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply `changes` (a PATCH or a full PUT) and emit `product.updated`."""
        async with self._db.transaction() as conn:
            if changes:
                await conn.execute(
                    update(products)
                    .where(products.c.id == product_id)
                    .values(**changes, updated_at=jsonutil.utcnow(), version=products.c.version + 1)
                )
            row = (
                await conn.execute(
                    select(*_COLUMNS, products.c.version)
                    .where(products.c.id == product_id)
                    .with_for_update()
                )
            ).first()
            if row is None:
                raise NotFound(f"No product with id {product_id}.")
            product = dict(zip(_KEYS, row[: len(_KEYS)], strict=True))
            if changes:
                await _emit(conn, "product.updated", product_id, row.version, product)
        if changes:
            self._changed()
        return product

    async def patch_product(self, product_id: int, patch: ProductPatch) -> dict[str, Any]:
        return await self.update_product(product_id, patch.changes())

    async def delete_product(self, product_id: int) -> None:
        """Remove a product and emit `product.deleted`; orders keep their own copy of the price."""
        async with self._db.transaction() as conn:
            version = await conn.scalar(
                select(products.c.version).where(products.c.id == product_id).with_for_update()
            )
            if version is None:
                raise NotFound(f"No product with id {product_id}.")
            await conn.execute(delete(products).where(products.c.id == product_id))
            await _emit(conn, "product.deleted", product_id, version + 1, {"id": product_id})
        self._changed()


async def _emit(
    conn: AsyncConnection, event_type: str, product_id: int, version: int, data: dict[str, Any]
) -> None:
    """Record a product event (the product's version after the change) in the outbox."""
    event = Event("product", event_type, str(product_id), version, data)
    await outbox.add_events(conn, product_outbox, [event])


def _retrieved(load: asyncio.Future[Any]) -> None:
    """Mark a shared load's failure as seen; every waiter got it already, if any was left."""
    if not load.cancelled():
        load.exception()
