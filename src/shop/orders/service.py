"""Order use cases: place (sync), accept (async), process a batch of commands, cancel, read."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter, Histogram
from sqlalchemy import Row, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from shop import jsonutil, outbox
from shop.db import Database
from shop.errors import Conflict, IdempotencyMismatch, InvalidInput, NotFound, OutOfStock
from shop.ids import derived_uuid, uuid7
from shop.orders import inventory
from shop.orders.models import OrderCommand, PlaceOrder
from shop.orders.tables import order_outbox, orders

ORDERS_ACCEPTED = Counter("orders_accepted_total", "Orders accepted at intake", ["channel"])
ORDERS_STORED = Counter("orders_stored_total", "Orders stored", ["channel", "status"])
BATCH_SIZE = Histogram(
    "order_batch_size",
    "Commands per consumer batch",
    ["channel"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)

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


class CommandPublisher(Protocol):
    """A broker that carries order commands; raises Unavailable when it does not confirm."""

    async def publish_command(self, command: OrderCommand) -> None: ...


@dataclass(frozen=True, slots=True)
class OrderQuery:
    """A page of orders in id (creation) order, optionally of one user and/or one status."""

    limit: int = 100
    cursor: str | None = None
    user_id: int | None = None
    status: str | None = None


def order_as_dict(row: Row[*tuple[Any, ...]] | Mapping[str, Any]) -> dict[str, Any]:
    get = row._mapping if isinstance(row, Row) else row
    return {
        "id": str(uuid.UUID(bytes=get["id"])),
        "user_id": get["user_id"],
        "product_id": get["product_id"],
        "quantity": get["quantity"],
        "status": get["status"],
        "reason": get["reason"],
        "unit_price": get["unit_price"],
        "total_price": get["total_price"],
        "channel": get["channel"],
        "created_at": jsonutil.as_utc(get["created_at"]),
    }


def _cursor_id(cursor: str) -> bytes:
    try:
        return uuid.UUID(cursor).bytes
    except ValueError:
        raise InvalidInput("not a cursor this service issued", field="cursor") from None


def order_id_for(user_id: int, idempotency_key: str | None) -> uuid.UUID:
    """A new time-ordered id, or the one id that a user's Idempotency-Key always maps to."""
    if idempotency_key is None:
        return uuid7()
    return derived_uuid("order", str(user_id), idempotency_key)


def _order_row(
    *,
    order_id: uuid.UUID,
    user_id: int,
    product_id: int,
    quantity: int,
    channel: str,
    allocation: inventory.Allocation,
    created_at: Any,
) -> dict[str, Any]:
    # A rejected order took nothing, so it carries no price.
    price = allocation.unit_price if allocation.allocated else None
    return {
        "id": order_id.bytes,
        "user_id": user_id,
        "product_id": product_id,
        "quantity": quantity,
        "status": "confirmed" if allocation.allocated else "rejected",
        "reason": allocation.reason,
        "unit_price": price,
        "total_price": price * quantity if price is not None else None,
        "channel": channel,
        "created_at": created_at,
        "updated_at": created_at,
    }


class OrderService:
    """Orders, each stored with its event in one transaction."""

    def __init__(
        self,
        db: Database,
        *,
        publishers: Mapping[str, CommandPublisher],
        on_event: Callable[[], None],
    ) -> None:
        self._db = db
        self._publishers = publishers
        self._on_event = on_event

    async def place_order(
        self, order: PlaceOrder, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Reserve stock and store a confirmed order now; OutOfStock when there is too little."""
        order_id = order_id_for(order.user_id, idempotency_key)
        try:
            async with self._db.transaction() as conn:
                if idempotency_key is not None:
                    known = await self._known(conn, order_id, order)
                    if known is not None:
                        return known
                placed = await self._reserve_and_store(conn, order_id, order)
        except IntegrityError:
            if idempotency_key is None:
                raise
            # The same key raced us and won: answer with its order.
            async with self._db.transaction() as conn:
                known = await self._known(conn, order_id, order)
            if known is None:
                raise
            return known
        self._on_event()
        return placed

    async def _reserve_and_store(
        self, conn: AsyncConnection, order_id: uuid.UUID, order: PlaceOrder
    ) -> dict[str, Any]:
        allocation = await inventory.reserve_stock(
            conn, product_id=order.product_id, quantity=order.quantity
        )
        if allocation.reason == "unknown_product":
            raise InvalidInput(f"No product with id {order.product_id}.", field="product_id")
        if allocation.reason == "out_of_stock":
            raise OutOfStock(
                f"Product {order.product_id} has too little stock for {order.quantity} unit(s)."
            )
        row = _order_row(
            order_id=order_id,
            user_id=order.user_id,
            product_id=order.product_id,
            quantity=order.quantity,
            channel="sync",
            allocation=allocation,
            created_at=jsonutil.utcnow(),
        )
        await conn.execute(orders.insert().values(row))
        placed = order_as_dict(row)
        await outbox.add(
            conn, order_outbox, event_type="order.confirmed", key=placed["id"], data=placed
        )
        ORDERS_STORED.labels("sync", "confirmed").inc()
        return placed

    async def _known(
        self, conn: AsyncConnection, order_id: uuid.UUID, order: PlaceOrder
    ) -> dict[str, Any] | None:
        row = (await conn.execute(select(*_COLUMNS).where(orders.c.id == order_id.bytes))).first()
        if row is None:
            return None
        if (row.product_id, row.quantity) != (order.product_id, order.quantity):
            raise IdempotencyMismatch("This Idempotency-Key was first used with a different order.")
        return order_as_dict(row)

    async def accept_order(
        self, order: PlaceOrder, *, channel: str, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Hand the order to a broker; it is stored when a consumer processes the command."""
        command = OrderCommand(
            id=order_id_for(order.user_id, idempotency_key),
            user_id=order.user_id,
            product_id=order.product_id,
            quantity=order.quantity,
            channel=channel,
            accepted_at=jsonutil.as_utc(jsonutil.utcnow()),
        )
        await self._publishers[channel].publish_command(command)
        ORDERS_ACCEPTED.labels(channel).inc()
        return {
            "id": str(command.id),
            "status": "pending",
            "user_id": order.user_id,
            "product_id": order.product_id,
            "quantity": order.quantity,
            "channel": channel,
        }

    async def process_order_batch(self, commands: Sequence[OrderCommand]) -> int:
        """Store a batch of commands in one transaction, allocating stock in message order.

        Ids already stored (redelivery, a twin through the other broker) are skipped. Returns
        how many orders were stored. A twin committed concurrently makes the insert fail with
        IntegrityError; the caller retries the batch, which then skips it.
        """
        unique = list({command.id: command for command in reversed(commands)}.values())[::-1]
        if not unique:
            return 0
        channel = unique[0].channel
        BATCH_SIZE.labels(channel).observe(len(commands))
        async with self._db.transaction() as conn:
            stored = set(
                (
                    await conn.execute(
                        select(orders.c.id).where(orders.c.id.in_([c.id.bytes for c in unique]))
                    )
                ).scalars()
            )
            todo = [c for c in unique if c.id.bytes not in stored]
            if not todo:
                return 0
            allocations = await inventory.allocate_in_order(
                conn, [(c.product_id, c.quantity) for c in todo]
            )
            now = jsonutil.utcnow()
            rows = [
                _order_row(
                    order_id=c.id,
                    user_id=c.user_id,
                    product_id=c.product_id,
                    quantity=c.quantity,
                    channel=c.channel,
                    allocation=a,
                    created_at=now,
                )
                for c, a in zip(todo, allocations, strict=True)
            ]
            await conn.execute(orders.insert(), rows)
            events = []
            for row in rows:
                data = order_as_dict(row)
                events.append((f"order.{row['status']}", data["id"], data))
            await outbox.add_many(conn, order_outbox, events)
        for row in rows:
            ORDERS_STORED.labels(row["channel"], row["status"]).inc()
        self._on_event()
        return len(rows)

    async def cancel_order(self, order_id: uuid.UUID) -> dict[str, Any]:
        """Cancel a confirmed order and give its units back; anything else is a Conflict."""
        async with self._db.transaction() as conn:
            row = (
                await conn.execute(
                    select(*_COLUMNS).where(orders.c.id == order_id.bytes).with_for_update()
                )
            ).first()
            if row is None:
                raise NotFound(f"No order with id {order_id}.")
            if row.status != "confirmed":
                raise Conflict(f"Order {order_id} is {row.status}; only confirmed orders cancel.")
            await inventory.release_stock(conn, product_id=row.product_id, quantity=row.quantity)
            await conn.execute(
                update(orders)
                .where(orders.c.id == order_id.bytes)
                .values(status="cancelled", updated_at=jsonutil.utcnow())
            )
            cancelled = {**order_as_dict(row), "status": "cancelled"}
            await outbox.add(
                conn,
                order_outbox,
                event_type="order.cancelled",
                key=cancelled["id"],
                data=cancelled,
            )
        self._on_event()
        return cancelled

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
