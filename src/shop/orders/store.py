"""The order store: the port through which the order service loads and stores, and its adapter
over MariaDB, with the SQL of orders, the keys and aliases that name them, and their events
(products and their stock: `inventory`).

A unit (`OrderUnit`) is one transaction: it loads what a decision needs, under lock, then saves
the decision and commits. The SQL unit keeps a batch to two round trips (its reads; its writes
with the COMMIT) on the driver's connection (`Database.transact_statements`). Unit tests use an
in-memory store (tests/unit/fakes.py); tests/integration/test_order_store.py runs this one.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.dialects.mysql import insert as mysql_insert

from shop import jsonutil
from shop.orders import inventory
from shop.orders.domain import Decision, KeyClaim, Known, Order, OrderRequest, Product
from shop.orders.tables import order_aliases, order_keys, order_outbox, orders
from shop.storage import outbox
from shop.storage.database import Database, Statements, in_list, insert_sql, run_text, sql_literal

T = TypeVar("T")


class OrderUnit(Protocol):
    """One transaction of the order store."""

    async def known(self, requests: Sequence[OrderRequest]) -> Known:
        """What deciding `requests` needs: the stored orders under their ids (aliases too) and
        keys, the keys' claims, and their products, locked."""

    async def lock_order(self, order_id: uuid.UUID) -> tuple[Order | None, Product | None]:
        """The order with this id and its product (None: there is none), both locked."""

    async def save(self, decision: Decision) -> None:
        """Store the decision (orders, keys, aliases, stock, events) and commit."""


class OrderStore(Protocol):
    """Orders, their keys and the stock they take, as the order service sees them."""

    timeout: float  # how long a unit of work may take, in seconds

    async def transact(self, work: Callable[[OrderUnit], Awaitable[T]]) -> T:
        """`work` in one unit, run again when a try is known not to have committed; a unit
        that does not save rolls back. A twin's commit meanwhile raises IntegrityError."""

    async def claim_key(self, key: bytes, claim: KeyClaim) -> KeyClaim:
        """Give `key` the order of `claim` unless an earlier request did; the key's claim."""

    async def get(self, order_id: uuid.UUID) -> Order | None:
        """One order by its id, or by the id an asynchronous retry of it was given."""

    async def page(
        self, *, limit: int, after: uuid.UUID | None, user_id: int | None, status: str | None
    ) -> Sequence[Order]:
        """Up to `limit` orders in id (creation) order after `after`."""


class SqlOrderStore:
    """The order store on MariaDB."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.timeout = db.timeout

    async def transact(self, work: Callable[[OrderUnit], Awaitable[T]]) -> T:
        return await self._db.transact_statements(lambda sql: work(_SqlUnit(sql)))

    async def claim_key(self, key: bytes, claim: KeyClaim) -> KeyClaim:
        async with self._db.read() as conn:
            row = (key, claim.order_id.bytes, claim.product_id, claim.quantity, jsonutil.utcnow())
            insert = mysql_insert(order_keys).values(row)  # table order; the first claim stays
            await conn.execute(insert.on_duplicate_key_update(key_hash=order_keys.c.key_hash))
            return claims_from((await run_text(conn, claims_sql([key]))).all())[key]

    async def get(self, order_id: uuid.UUID) -> Order | None:
        async with self._db.read() as conn:
            found = orders_from((await run_text(conn, orders_by_id_sql([order_id]))).all())
        return found.get(order_id)

    async def page(
        self, *, limit: int, after: uuid.UUID | None, user_id: int | None, status: str | None
    ) -> Sequence[Order]:
        stmt = select(*_COLUMNS).order_by(orders.c.id).limit(limit)
        if after is not None:
            stmt = stmt.where(orders.c.id > after.bytes)
        if user_id is not None:
            stmt = stmt.where(orders.c.user_id == user_id)
        if status is not None:
            stmt = stmt.where(orders.c.status == status)
        async with self._db.read() as conn:
            return [order_from(row) for row in await conn.execute(stmt)]


class _SqlUnit:
    def __init__(self, sql: Statements) -> None:
        self._sql = sql

    async def known(self, requests: Sequence[OrderRequest]) -> Known:
        ids = {r.order_id for r in requests if r.channel != "sync"}  # sync ids are new
        keys = {r.key for r in requests if r.key is not None}
        reads = [inventory.lock_sql({r.product_id for r in requests})]
        if ids:
            reads.insert(0, orders_by_id_sql(ids))
        if keys:
            reads.insert(0, claims_sql(keys))
        rows = await self._sql.run(reads)
        products = inventory.products_from(rows.pop())
        by_id = orders_from(rows.pop()) if ids else {}
        claims = claims_from(rows.pop()) if keys else {}
        claimed = {c.order_id for c in claims.values()} - by_id.keys()
        if claimed:  # orders that keys were claimed for, under ids this batch does not carry
            by_id.update(orders_from((await self._sql.run([orders_by_id_sql(claimed)]))[0]))
        return Known(orders=by_id, products=products, claims=claims)

    async def lock_order(self, order_id: uuid.UUID) -> tuple[Order | None, Product | None]:
        [rows] = await self._sql.run([lock_order_sql(order_id)])
        if not rows:
            return None, None
        order = order_from(rows[0])
        [rows] = await self._sql.run([inventory.lock_sql([order.product_id])])
        return order, inventory.products_from(rows).get(order.product_id)

    async def save(self, decision: Decision) -> None:
        writes = save_statements(decision)
        writes += inventory.save_stock_statements(decision.products.values(), decision.events)
        await self._sql.run(writes, commit=True)


# The row shape is the domain's Order: one column per field (tests/unit checks the table).
FIELDS = tuple(f.name for f in dataclasses.fields(Order))
_COLUMNS = tuple(orders.c[name] for name in FIELDS)
_INSERT_ORDERS = f"INSERT INTO orders ({', '.join(FIELDS)}) VALUES "


def order_from(row: Sequence[Any]) -> Order:
    """An order from its row (the columns in FIELDS order)."""
    values = dict(zip(FIELDS, row, strict=False))
    values["id"] = uuid.UUID(bytes=values["id"])
    return Order(**values)


def order_values(order: Order) -> str:
    """`(v1, ...)`: the order's row as SQL literals, as `sql_literal` writes each field.

    Spelled out for the hottest insert: the generic dispatch per value was a fifth of a sync
    batch's CPU (tests/unit/test_order_rows.py holds the two to the same text).
    """
    created = sql_literal(order.created_at)
    updated = created if order.updated_at == order.created_at else sql_literal(order.updated_at)
    return (
        f"(X'{order.id.hex}', {order.user_id:d}, {order.product_id:d}, {order.quantity:d}, "
        f"{sql_literal(order.status)}, {sql_literal(order.reason)}, "
        f"{sql_literal(order.unit_price)}, {sql_literal(order.total_price)}, "
        f"{sql_literal(order.channel)}, {created}, {updated}, {order.version:d})"
    )


def claims_sql(keys: Collection[bytes]) -> str:
    """The key claims of `keys`; its rows go to `claims_from`."""
    return (
        "SELECT key_hash, order_id, product_id, quantity FROM order_keys "
        f"WHERE key_hash IN {in_list(keys)}"
    )


def claims_from(rows: Sequence[Sequence[Any]]) -> dict[bytes, KeyClaim]:
    return {row[0]: KeyClaim(uuid.UUID(bytes=row[1]), row[2], row[3]) for row in rows}


def orders_by_id_sql(ids: Collection[uuid.UUID]) -> str:
    """Orders by their own ids and by their aliases' ids; its rows go to `orders_from`."""
    wanted = in_list(i.bytes for i in ids)
    return (
        f"SELECT {_OWN_COLUMNS}, o.id FROM orders o WHERE o.id IN {wanted} UNION ALL "
        f"SELECT {_OWN_COLUMNS}, a.id FROM order_aliases a JOIN orders o ON o.id = a.order_id "
        f"WHERE a.id IN {wanted}"
    )


_OWN_COLUMNS = ", ".join(f"o.{name}" for name in FIELDS)


def orders_from(rows: Sequence[Sequence[Any]]) -> dict[uuid.UUID, Order]:
    """Rows of `orders_by_id_sql`: each order under the id it was asked by."""
    return {uuid.UUID(bytes=row[-1]): order_from(row) for row in rows}


def lock_order_sql(order_id: uuid.UUID) -> str:
    """The order with this id (not an alias), locked; its row goes to `order_from`."""
    return f"SELECT {', '.join(FIELDS)} FROM orders WHERE id = X'{order_id.hex}' FOR UPDATE"


def save_statements(decision: Decision) -> list[str]:
    """The decision's new orders, keys, aliases, changed orders and order events as SQL text."""
    statements: list[str] = []
    if decision.orders:
        statements.append(_INSERT_ORDERS + ", ".join([order_values(o) for o in decision.orders]))
    now = jsonutil.utcnow()
    if decision.keys:
        placed = {o.id: o for o in decision.orders}
        rows = [
            (k, i.bytes, placed[i].product_id, placed[i].quantity, now)
            for k, i in decision.keys.items()
        ]
        statements.append(insert_sql(order_keys.name, tuple(order_keys.c.keys()), rows))
    if decision.aliases:
        aliases = [(a.bytes, o.bytes, now) for a, o in decision.aliases.items()]
        statements.append(insert_sql(order_aliases.name, tuple(order_aliases.c.keys()), aliases))
    statements += [
        f"UPDATE orders SET status = {sql_literal(o.status)}, updated_at = "
        f"{sql_literal(o.updated_at)}, version = {o.version:d} WHERE id = X'{o.id.hex}'"
        for o in decision.changed
    ]
    events = [e for e in decision.events if e.aggregate == "order"]
    if events:
        statements.append(outbox.insert_events_sql(order_outbox, events))
    return statements
