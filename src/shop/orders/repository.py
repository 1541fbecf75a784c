"""The order service's SQL: orders, the keys and aliases that name them, and their events."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import BindParameter, Row, bindparam, select, union_all, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shop import jsonutil, outbox
from shop.db import insert_rows
from shop.orders.domain import Decision, KeyClaim, Known, Order
from shop.orders.tables import order_aliases, order_keys, order_outbox, orders

# The row shape is the domain's Order: one column per field (tests/unit checks the table).
FIELDS = tuple(f.name for f in dataclasses.fields(Order))
_COLUMNS = tuple(orders.c[name] for name in FIELDS)


def _from_row(row: Row[Any]) -> Order:
    values = dict(zip(FIELDS, row, strict=False))
    values["id"] = uuid.UUID(bytes=values["id"])
    return Order(**values)


def _as_row(order: Order) -> tuple[Any, ...]:
    return (order.id.bytes, *(getattr(order, name) for name in FIELDS[1:]))


async def find_known(
    conn: AsyncConnection, *, ids: Collection[uuid.UUID], keys: Collection[bytes]
) -> Known:
    """The stored orders (by id, an alias's id, or key) and the key claims of a batch."""
    claims = await _claims(conn, keys)
    wanted = {*ids, *(claim.order_id for claim in claims.values())}
    by_id = await _orders_by_id(conn, wanted)
    by_key = {k: by_id[c.order_id] for k, c in claims.items() if c.order_id in by_id}
    unstored = {k: c for k, c in claims.items() if c.order_id not in by_id}
    return Known(orders=by_id, keys=by_key, claims=unstored)


async def _claims(conn: AsyncConnection, keys: Collection[bytes]) -> dict[bytes, KeyClaim]:
    if not keys:
        return {}
    k = order_keys.c
    rows = await conn.execute(
        select(k.key_hash, k.order_id, k.product_id, k.quantity).where(k.key_hash.in_(keys))
    )
    return {
        row.key_hash: KeyClaim(uuid.UUID(bytes=row.order_id), row.product_id, row.quantity)
        for row in rows
    }


async def _orders_by_id(
    conn: AsyncConnection, ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, Order]:
    """Orders by their own ids and by their aliases' ids, in one round trip."""
    if not ids:
        return {}
    rows = await conn.execute(_OWN_OR_ALIASED, {"ids": [i.bytes for i in ids]})
    return {uuid.UUID(bytes=row.name): _from_row(row) for row in rows}


# Built once: constructing the statement again for every batch cost more than its compile.
_IDS: BindParameter[bytes] = bindparam("ids", expanding=True)
_OWN_OR_ALIASED = union_all(
    select(*_COLUMNS, orders.c.id.label("name")).where(orders.c.id.in_(_IDS)),
    select(*_COLUMNS, order_aliases.c.id.label("name"))
    .join_from(order_aliases, orders, orders.c.id == order_aliases.c.order_id)
    .where(order_aliases.c.id.in_(_IDS)),
)


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


async def insert(conn: AsyncConnection, decision: Decision) -> None:
    """Store the decision's new orders, keys, aliases and order events."""
    if decision.orders:
        await insert_rows(conn, orders.name, FIELDS, [_as_row(o) for o in decision.orders])
    if decision.keys:
        placed = {o.id: o for o in decision.orders}
        await conn.execute(
            order_keys.insert(),
            [
                {
                    "key_hash": k,
                    "order_id": i.bytes,
                    "product_id": placed[i].product_id,
                    "quantity": placed[i].quantity,
                    "created_at": jsonutil.utcnow(),
                }
                for k, i in decision.keys.items()
            ],
        )
    if decision.aliases:
        await conn.execute(
            order_aliases.insert(),
            [
                {"id": a.bytes, "order_id": o.bytes, "created_at": jsonutil.utcnow()}
                for a, o in decision.aliases.items()
            ],
        )
    await _add_events(conn, decision)


async def save_cancelled(conn: AsyncConnection, decision: Decision) -> None:
    """Store the status and version of cancelled orders, and their events."""
    for order in decision.orders:
        await conn.execute(
            update(orders)
            .where(orders.c.id == order.id.bytes)
            .values(status=order.status, updated_at=order.updated_at, version=order.version)
        )
    await _add_events(conn, decision)


async def _add_events(conn: AsyncConnection, decision: Decision) -> None:
    await outbox.add_events(
        conn, order_outbox, [e for e in decision.events if e.aggregate == "order"]
    )


async def get_for_update(conn: AsyncConnection, order_id: uuid.UUID) -> Order | None:
    """One order, locked until the transaction ends."""
    row = (
        await conn.execute(select(*_COLUMNS).where(orders.c.id == order_id.bytes).with_for_update())
    ).first()
    return _from_row(row) if row is not None else None


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
    return [_from_row(row) for row in await conn.execute(stmt)]
