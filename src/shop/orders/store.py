"""The order store: the port through which the order service loads and stores, and its adapter
over MariaDB (the SQL of `repository` and `inventory`).

A unit (`OrderUnit`) is one transaction: it loads what a decision needs, under lock, then saves
the decision and commits. The SQL unit keeps a batch to two round trips (its reads; its writes
with the COMMIT) on the driver's connection (`Database.transact_statements`). Unit tests use an
in-memory store (tests/unit/fakes.py); tests/integration/test_order_store.py runs this one.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from shop.orders import inventory, repository
from shop.orders.domain import Decision, KeyClaim, Known, Order, OrderRequest, Product
from shop.storage.database import Database, Statements

T = TypeVar("T")


class OrderUnit(Protocol):
    """One transaction of the order store."""

    async def known(self, requests: Sequence[OrderRequest]) -> Known:
        """What deciding `requests` needs: the stored orders under their ids (aliases too) and
        keys, the keys' claims, and their products, locked."""
        ...

    async def lock_order(self, order_id: uuid.UUID) -> tuple[Order | None, Product | None]:
        """The order with this id and its product (None: there is none), both locked."""
        ...

    async def save(self, decision: Decision) -> None:
        """Store the decision (orders, keys, aliases, stock, events) and commit."""
        ...


class OrderStore(Protocol):
    """Orders, their keys and the stock they take, as the order service sees them."""

    timeout: float  # how long a unit of work may take, in seconds

    async def transact(self, work: Callable[[OrderUnit], Awaitable[T]]) -> T:
        """`work` in one unit, run again when a try is known not to have committed; a unit
        that does not save rolls back. A twin's commit meanwhile raises IntegrityError."""
        ...

    async def claim_key(self, key: bytes, claim: KeyClaim) -> KeyClaim:
        """Give `key` the order of `claim` unless an earlier request did; the key's claim."""
        ...

    async def get(self, order_id: uuid.UUID) -> Order | None:
        """One order by its id, or by the id an asynchronous retry of it was given."""
        ...

    async def page(
        self, *, limit: int, after: uuid.UUID | None, user_id: int | None, status: str | None
    ) -> Sequence[Order]:
        """Up to `limit` orders in id (creation) order after `after`."""
        ...


class SqlOrderStore:
    """The order store on MariaDB."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.timeout = db.timeout

    async def transact(self, work: Callable[[OrderUnit], Awaitable[T]]) -> T:
        return await self._db.transact_statements(lambda sql: work(_SqlUnit(sql)))

    async def claim_key(self, key: bytes, claim: KeyClaim) -> KeyClaim:
        async with self._db.read() as conn:
            return await repository.claim_key(conn, key, claim)

    async def get(self, order_id: uuid.UUID) -> Order | None:
        async with self._db.read() as conn:
            return await repository.get(conn, order_id)

    async def page(
        self, *, limit: int, after: uuid.UUID | None, user_id: int | None, status: str | None
    ) -> Sequence[Order]:
        async with self._db.read() as conn:
            return await repository.page(
                conn, limit=limit, after=after, user_id=user_id, status=status
            )


class _SqlUnit:
    def __init__(self, sql: Statements) -> None:
        self._sql = sql

    async def known(self, requests: Sequence[OrderRequest]) -> Known:
        sql = self._sql
        ids = {r.order_id for r in requests if r.channel != "sync"}  # sync ids are new
        keys = {r.key for r in requests if r.key is not None}
        reads = [inventory.lock_sql({r.product_id for r in requests})]
        if ids:
            reads.insert(0, repository.orders_by_id_sql(ids))
        if keys:
            reads.insert(0, repository.claims_sql(keys))
        rows = await sql.run(reads)
        products = inventory.products_from(rows.pop())
        by_id = repository.orders_from(rows.pop()) if ids else {}
        claims = repository.claims_from(rows.pop()) if keys else {}
        claimed = {c.order_id for c in claims.values()} - by_id.keys()
        if claimed:  # orders that keys were claimed for, under ids this batch does not carry
            by_id.update(
                repository.orders_from((await sql.run([repository.orders_by_id_sql(claimed)]))[0])
            )
        return Known.of(by_id, claims, products)

    async def lock_order(self, order_id: uuid.UUID) -> tuple[Order | None, Product | None]:
        [rows] = await self._sql.run([repository.lock_order_sql(order_id)])
        if not rows:
            return None, None
        order = repository.order_from(rows[0])
        [rows] = await self._sql.run([inventory.lock_sql([order.product_id])])
        return order, inventory.products_from(rows).get(order.product_id)

    async def save(self, decision: Decision) -> None:
        writes = repository.save_statements(decision)
        writes += inventory.save_stock_statements(decision.products.values(), decision.events)
        await self._sql.run(writes, commit=True)
