"""Product use cases: each loads what it needs from the store, lets `shop.products.domain`
decide, and stores the result with its outbox event in one unit of work."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from shop import jsonutil
from shop.errors import NotFound
from shop.products import domain
from shop.products.domain import ProductQuery, ProductView
from shop.products.models import ProductCreate
from shop.products.page_cache import Page, PageCache
from shop.products.repository import KeyTaken, ProductStore
from shop.settings import Products
from shop.storage import idempotency
from shop.storage.write_counter import Generation

T = TypeVar("T")


class ProductService:
    """The catalogue: every change is committed together with its outbox event."""

    def __init__(
        self,
        store: ProductStore,
        *,
        on_event: Callable[[], None],
        settings: Products,
        writes: Generation | None = None,
    ) -> None:
        self._store = store
        self._on_event = on_event
        self._pages = PageCache(self._render, settings, writes=writes or Generation())

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
        except KeyTaken:
            assert key is not None  # only a keyed creation stores an answer
            # A twin request with the same key committed first: answer as it was answered.
            async with self._store.transaction() as tx:
                remembered = await tx.recall(key)
            if remembered is None:
                raise
            return remembered
        self._changed()
        return answer

    async def _create_once(
        self, data: ProductCreate, key: idempotency.Key | None
    ) -> idempotency.Answer:
        now = jsonutil.utcnow()
        async with self._store.transaction() as tx:
            if key is not None:
                remembered = await tx.recall(key)
                if remembered is not None:
                    return remembered
            fields = {**data.model_dump(), "created_at": now, "updated_at": now}
            product_id = await tx.insert(fields, version=domain.FIRST_VERSION)
            product = ProductView(id=product_id, **fields)
            await tx.add_event(domain.created(product))
            answer = idempotency.Answer(status=201, body=jsonutil.dumps(product))
            if key is not None:
                await tx.remember(key, answer)
        return answer

    async def get_product(self, product_id: int) -> ProductView:
        """One product, or NotFound."""
        return _found(product_id, await self._store.get(product_id))

    def list_products_json(self, query: ProductQuery) -> Coroutine[Any, Any, Page]:
        """A page as JSON, from a short-lived per-process cache when it is fresh."""
        return self._pages.get(query)  # not awaited here: one coroutine less per read

    async def _render(self, query: ProductQuery) -> Page:
        after = domain.start_of(query)
        if domain.matches_nothing(query):
            return Page(b"[]", None)
        rows = await self._store.page(query, after=after)
        page = rows[: query.limit]
        more = len(rows) > query.limit
        return Page(jsonutil.dumps(page), domain.encode_cursor(page[-1]["id"]) if more else None)

    def _changed(self) -> None:
        # Later reads, in any worker, must see this write.
        self._pages.written()
        self._on_event()

    async def update_product(self, product_id: int, changes: Mapping[str, Any]) -> ProductView:
        """Apply `changes` (a PATCH or a full PUT) and emit `product.updated`."""
        async with self._store.transaction() as tx:
            current = _found(product_id, await tx.lock(product_id))
            after = current.changed(changes, jsonutil.utcnow())
            if after is None:
                return current.product
            await tx.update(after, changes.keys())
            await tx.add_event(domain.updated(after))
        self._changed()
        return after.product

    async def delete_product(self, product_id: int) -> None:
        """Remove a product and emit `product.deleted`; orders keep their own copy of the price."""
        async with self._store.transaction() as tx:
            current = _found(product_id, await tx.lock(product_id))
            await tx.delete(product_id)
            await tx.add_event(domain.deleted(current))
        self._changed()


def _found(product_id: int, product: T | None) -> T:
    """The product (read, or locked), or NotFound when there is none."""
    if product is None:
        raise NotFound(f"No product with id {product_id}.")
    return product
