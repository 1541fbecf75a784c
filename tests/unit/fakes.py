"""In-memory stand-ins for the order service's ports, for unit tests of the service.

`FakeOrderStore` keeps orders, keys, aliases, products and events in dictionaries and behaves
as the SQL store does where the service can tell: a unit saves all of its decision or nothing,
a duplicate order id, key or alias (the tables' primary keys) and a stock below zero (the CHECK)
raise IntegrityError, and a unit that raises leaves the store as it was. Like cosmicpython's
FakeRepository, it lets the tests drive every use case without a database.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError

from shop.events import Event
from shop.orders.domain import Decision, KeyClaim, Known, Order, OrderRequest, Product
from shop.orders.models import OrderCommand
from shop.orders.prices import Prices
from shop.settings import Orders

T = TypeVar("T")


def _refused(what: str) -> IntegrityError:
    return IntegrityError("INSERT ...", {}, Exception(1062, f"Duplicate entry for {what}"))


class FakeOrderStore:
    """The order store in memory (see the module's docstring)."""

    timeout = 5.0

    def __init__(self, products: Iterable[Product] = ()) -> None:
        self.products = {p.id: p for p in products}
        self.orders: dict[uuid.UUID, Order] = {}
        self.aliases: dict[uuid.UUID, uuid.UUID] = {}
        self.keys: dict[bytes, KeyClaim] = {}
        self.events: list[Event] = []
        self.units = 0  # units of work begun
        self.commits = 0
        # Run between a unit's loads and its save, as another process's commit would land.
        self.meanwhile: list[Callable[[FakeOrderStore], None]] = []
        self.conflicts = 0  # saves still to refuse, as if a twin had committed first

    async def transact(self, work: Callable[[Any], Awaitable[T]]) -> T:
        self.units += 1
        return await work(_FakeUnit(self))

    async def claim_key(self, key: bytes, claim: KeyClaim) -> KeyClaim:
        return self.keys.setdefault(key, claim)

    async def get(self, order_id: uuid.UUID) -> Order | None:
        return self.find(order_id)

    async def page(
        self, *, limit: int, after: uuid.UUID | None, user_id: int | None, status: str | None
    ) -> Sequence[Order]:
        found = [
            o
            for o in sorted(self.orders.values(), key=lambda o: o.id.bytes)
            if (after is None or o.id.bytes > after.bytes)
            and user_id in (None, o.user_id)
            and status in (None, o.status)
        ]
        return found[:limit]

    def find(self, order_id: uuid.UUID) -> Order | None:
        """An order by its id or by an alias's."""
        return self.orders.get(self.aliases.get(order_id, order_id))

    def stock(self, product_id: int) -> int | None:
        return self.products[product_id].stock

    def event_types(self) -> list[str]:
        return [e.type for e in self.events]

    def commit(self, decision: Decision) -> None:
        """Store `decision` whole, or refuse it whole as the database's keys would."""
        if self.conflicts > 0:
            self.conflicts -= 1
            raise _refused("a twin's row")
        for order in decision.orders:
            if order.id in self.orders:
                raise _refused(f"order {order.id}")
        if any(k in self.keys for k in decision.keys) or any(
            a in self.aliases for a in decision.aliases
        ):
            raise _refused("a key or an alias")
        if any(p.stock is not None and p.stock < 0 for p in decision.products.values()):
            raise IntegrityError("UPDATE ...", {}, Exception(4025, "CONSTRAINT stock failed"))
        placed = {o.id: o for o in decision.orders}
        for order in [*decision.orders, *decision.changed]:
            self.orders[order.id] = order
        for key, order_id in decision.keys.items():
            order = placed[order_id]
            self.keys[key] = KeyClaim(order_id, order.product_id, order.quantity)
        self.aliases.update(decision.aliases)
        self.products.update(decision.products)
        self.events += decision.events
        self.commits += 1


class _FakeUnit:
    """One unit of work on a FakeOrderStore: reads now, writes on `save`."""

    def __init__(self, store: FakeOrderStore) -> None:
        self._store = store

    async def known(self, requests: Sequence[OrderRequest]) -> Known:
        store = self._store
        ids = {r.order_id for r in requests if r.channel != "sync"}
        claims = {r.key: store.keys[r.key] for r in requests if r.key in store.keys}
        wanted = ids | {c.order_id for c in claims.values()}
        orders = {i: o for i in wanted if (o := store.find(i)) is not None}
        wanted_products = {r.product_id for r in requests} & store.products.keys()
        products = {i: store.products[i] for i in wanted_products}
        known = Known(orders=orders, products=products, claims=claims)
        self._meanwhile()
        return known

    async def lock_order(self, order_id: uuid.UUID) -> tuple[Order | None, Product | None]:
        order = self._store.orders.get(order_id)
        product = self._store.products.get(order.product_id) if order is not None else None
        self._meanwhile()
        return order, product

    async def save(self, decision: Decision) -> None:
        self._store.commit(decision)

    def _meanwhile(self) -> None:
        hooks, self._store.meanwhile = self._store.meanwhile, []
        for hook in hooks:
            hook(self._store)


class FakePublisher:
    """A broker that confirms every command and keeps it."""

    def __init__(self) -> None:
        self.commands: list[OrderCommand] = []

    async def publish_command(self, command: OrderCommand) -> None:
        self.commands.append(command)


class _PriceReads:
    """Intake's price reads (`Prices`) answered from a fake store's products."""

    def __init__(self, store: FakeOrderStore) -> None:
        self._store = store

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Any]:
        yield self

    async def scalar(self, _statement: Any, params: dict[str, int]) -> Decimal | None:
        product = self._store.products.get(params["pid"])
        return product.price if product is not None else None


def fake_prices(store: FakeOrderStore) -> Prices:
    return Prices(_PriceReads(store), Orders())
