"""Order use cases."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, select

from shop import jsonutil
from shop.db import Database
from shop.errors import InvalidInput, NotFound
from shop.orders.tables import orders

_COLUMNS = (
    orders.c.id,
    orders.c.user_id,
    orders.c.product_id,
    orders.c.quantity,
    orders.c.status,
    orders.c.reason,
    orders.c.unit_price,
    orders.c.total_price,
    orders.c.channel,
    orders.c.created_at,
)


@dataclass(frozen=True, slots=True)
class OrderQuery:
    """A page of orders in id (creation) order, optionally of one user and/or one status."""

    limit: int = 100
    cursor: str | None = None
    user_id: int | None = None
    status: str | None = None


def order_as_dict(row: Row[*tuple[Any, ...]]) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(bytes=row.id)),
        "user_id": row.user_id,
        "product_id": row.product_id,
        "quantity": row.quantity,
        "status": row.status,
        "reason": row.reason,
        "unit_price": row.unit_price,
        "total_price": row.total_price,
        "channel": row.channel,
        "created_at": jsonutil.as_utc(row.created_at),
    }


def _cursor_id(cursor: str) -> bytes:
    try:
        return uuid.UUID(cursor).bytes
    except ValueError:
        raise InvalidInput("not a cursor this service issued", field="cursor") from None


class OrderService:
    """Orders: reading them here; placing them comes through the same class."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_order(self, order_id: uuid.UUID) -> dict[str, Any]:
        """One order, or NotFound."""
        async with self._db.transaction() as conn:
            row = (
                await conn.execute(select(*_COLUMNS).where(orders.c.id == order_id.bytes))
            ).first()
        if row is None:
            raise NotFound(f"No order with id {order_id}.")
        return order_as_dict(row)

    async def list_orders(self, query: OrderQuery) -> tuple[list[dict[str, Any]], str | None]:
        """A page of orders and the cursor of the next page, if any."""
        stmt = select(*_COLUMNS).order_by(orders.c.id).limit(query.limit + 1)
        if query.cursor is not None:
            stmt = stmt.where(orders.c.id > _cursor_id(query.cursor))
        if query.user_id is not None:
            stmt = stmt.where(orders.c.user_id == query.user_id)
        if query.status is not None:
            stmt = stmt.where(orders.c.status == query.status)
        async with self._db.transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        page = [order_as_dict(row) for row in rows[: query.limit]]
        next_cursor = page[-1]["id"] if len(rows) > query.limit else None
        return page, next_cursor
