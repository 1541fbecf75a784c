"""The order service's SQL: orders, the keys and aliases that name them, and their events."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shop import jsonutil
from shop.orders.domain import Decision, KeyClaim, Order
from shop.orders.tables import order_aliases, order_keys, order_outbox, orders
from shop.storage import outbox
from shop.storage.database import in_list, insert_head, insert_sql, run_text, sql_literal

# The row shape is the domain's Order: one column per field (tests/unit checks the table).
FIELDS = tuple(f.name for f in dataclasses.fields(Order))
_COLUMNS = tuple(orders.c[name] for name in FIELDS)


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
        values = ", ".join([order_values(o) for o in decision.orders])
        statements.append(f"{insert_head(orders.name, FIELDS)}{values}")
    now = jsonutil.utcnow()
    if decision.keys:
        placed = {o.id: o for o in decision.orders}
        rows = [
            (k, i.bytes, placed[i].product_id, placed[i].quantity, now)
            for k, i in decision.keys.items()
        ]
        statements.append(insert_sql(order_keys.name, _KEY_COLUMNS, rows))
    if decision.aliases:
        aliases = [(a.bytes, o.bytes, now) for a, o in decision.aliases.items()]
        statements.append(insert_sql(order_aliases.name, _ALIAS_COLUMNS, aliases))
    statements += [
        f"UPDATE orders SET status = {sql_literal(o.status)}, updated_at = "
        f"{sql_literal(o.updated_at)}, version = {o.version:d} WHERE id = X'{o.id.hex}'"
        for o in decision.changed
    ]
    events = [e for e in decision.events if e.aggregate == "order"]
    if events:
        statements.append(outbox.insert_events_sql(order_outbox, events))
    return statements


_KEY_COLUMNS = ("key_hash", "order_id", "product_id", "quantity", "created_at")
_ALIAS_COLUMNS = ("id", "order_id", "created_at")


async def _claims(conn: AsyncConnection, keys: Collection[bytes]) -> dict[bytes, KeyClaim]:
    if not keys:
        return {}
    return claims_from((await run_text(conn, claims_sql(keys))).all())


async def _orders_by_id(
    conn: AsyncConnection, ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, Order]:
    """Orders by their own ids and by their aliases' ids, in one round trip."""
    if not ids:
        return {}
    return orders_from((await run_text(conn, orders_by_id_sql(ids))).all())


async def claim_key(conn: AsyncConnection, key: bytes, claim: KeyClaim) -> KeyClaim:
    """Give `key` the order id of `claim` unless an earlier request did; the key's claim."""
    k = order_keys.c
    await conn.execute(
        mysql_insert(order_keys)
        .values(
            key_hash=key,
            order_id=claim.order_id.bytes,
            product_id=claim.product_id,
            quantity=claim.quantity,
            created_at=jsonutil.utcnow(),
        )
        .on_duplicate_key_update(key_hash=k.key_hash)  # the first claim stays
    )
    claims = await _claims(conn, [key])
    return claims[key]


async def get(conn: AsyncConnection, order_id: uuid.UUID) -> Order | None:
    """One order by its id, or by the id an asynchronous retry of it was given."""
    return (await _orders_by_id(conn, [order_id])).get(order_id)


async def page(
    conn: AsyncConnection,
    *,
    limit: int,
    after: uuid.UUID | None,
    user_id: int | None,
    status: str | None,
) -> Sequence[Order]:
    """Up to `limit` orders in id (creation) order after `after`."""
    stmt = select(*_COLUMNS).order_by(orders.c.id).limit(limit)
    if after is not None:
        stmt = stmt.where(orders.c.id > after.bytes)
    if user_id is not None:
        stmt = stmt.where(orders.c.user_id == user_id)
    if status is not None:
        stmt = stmt.where(orders.c.status == status)
    return [order_from(row) for row in await conn.execute(stmt)]
