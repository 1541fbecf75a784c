"""An in-memory `ProductStore`: the product service runs its load -> decide -> store path on it
without I/O. A unit of work changes copies and commits them when its block finishes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from shop.errors import IdempotencyMismatch, OutOfStock
from shop.events import Event
from shop.products.domain import ProductQuery, ProductView, Versioned, name_matches
from shop.products.repository import KeyTaken, ProductWrites
from shop.storage import idempotency

Remembered = dict[bytes, tuple[bytes, idempotency.Answer]]  # key hash: (request hash, answer)


class FakeProductStore:
    """The catalogue, its committed outbox and its Idempotency-Key answers, in memory."""

    def __init__(self) -> None:
        self.products: dict[int, Versioned] = {}
        self.events: list[Event] = []
        self.answers: Remembered = {}
        self.commits = 0
        self.last_id = 0
        # Answers a twin request commits while the next unit of work runs (a race on one key).
        self.twin_answers: Remembered = {}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[ProductWrites]:
        work = _FakeWrites(self)
        yield work
        self.products, self.answers = work.products, work.answers
        self.events += work.events
        self.last_id = work.last_id
        self.commits += 1

    async def get(self, product_id: int) -> ProductView | None:
        stored = self.products.get(product_id)
        return None if stored is None else stored.product

    async def page(self, query: ProductQuery, *, after: int | None) -> list[dict[str, Any]]:
        rows = [
            dataclasses.asdict(stored.product)
            for product_id, stored in sorted(self.products.items())
            if (after is None or product_id > after)
            and (not query.name or name_matches(stored.product.name, query.name))
            and (query.min_price is None or stored.product.price >= query.min_price)
            and (query.max_price is None or stored.product.price <= query.max_price)
        ]
        return rows[: query.limit + 1]

    def take_stock(self, product_id: int, quantity: int) -> None:
        """What an order does (`shop.orders.inventory`): stock down, version up, an event."""
        stored = self.products[product_id]
        stock = stored.product.stock
        if stock is not None and stock < quantity:
            raise OutOfStock(f"Only {stock} left of product {product_id}.")
        after = dataclasses.replace(
            stored.product, stock=None if stock is None else stock - quantity
        )
        self.products[product_id] = Versioned(after, stored.version + 1)
        data = {"id": product_id, "stock": after.stock}
        self.events.append(
            Event("product", "product.stock_changed", str(product_id), stored.version + 1, data)
        )


class _FakeWrites:
    def __init__(self, store: FakeProductStore) -> None:
        self._store = store
        self.products = dict(store.products)
        self.answers = dict(store.answers)
        self.events: list[Event] = []
        self.last_id = store.last_id

    async def recall(self, key: idempotency.Key) -> idempotency.Answer | None:
        if key.key_hash not in self.answers:
            return None
        request_hash, answer = self.answers[key.key_hash]
        if request_hash != key.request_hash:
            raise IdempotencyMismatch("first used with a different request body")
        return answer

    async def remember(self, key: idempotency.Key, answer: idempotency.Answer) -> None:
        self._store.answers.update(self._store.twin_answers)  # the twin commits meanwhile
        self._store.twin_answers = {}
        if key.key_hash in self._store.answers:
            raise KeyTaken
        self.answers[key.key_hash] = (key.request_hash, answer)

    async def insert(self, fields: Mapping[str, Any], *, version: int) -> int:
        self.last_id += 1
        self.products[self.last_id] = Versioned(ProductView(self.last_id, **fields), version)
        return self.last_id

    async def lock(self, product_id: int) -> Versioned | None:
        return self.products.get(product_id)

    async def update(self, after: Versioned, changed: Iterable[str]) -> None:
        values = {name: getattr(after.product, name) for name in (*changed, "updated_at")}
        stored = self.products[after.product.id]
        product = dataclasses.replace(stored.product, **values)
        self.products[after.product.id] = Versioned(product, after.version)

    async def delete(self, product_id: int) -> None:
        del self.products[product_id]

    async def add_event(self, event: Event) -> None:
        self.events.append(event)
