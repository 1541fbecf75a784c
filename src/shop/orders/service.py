"""Order use cases: place (sync), accept (async), process a batch of commands, cancel, read."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter, Histogram
from sqlalchemy import Row, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from shop import jsonutil, outbox
from shop.coalesce import Coalescer
from shop.db import Database
from shop.errors import Conflict, IdempotencyMismatch, InvalidInput, NotFound, OutOfStock
from shop.ids import derived_uuid, uuid7
from shop.orders import inventory
from shop.orders.models import AsyncChannel, OrderCommand, PlaceOrder
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
        "created_at": get["created_at"],
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


@dataclass(frozen=True, slots=True)
class _SyncOrder:
    order_id: uuid.UUID
    order: PlaceOrder
    keyed: bool


def _replay(known: dict[str, Any], order: PlaceOrder) -> dict[str, Any] | Exception:
    """The stored answer for a repeated key, unless the key came with a different order."""
    if (known["product_id"], known["quantity"]) != (order.product_id, order.quantity):
        return IdempotencyMismatch("This Idempotency-Key was first used with a different order.")
    return known


async def _store_orders(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert orders with their `order.<status>` events; returns them as the API shows them."""
    if not rows:
        return []
    placed = [order_as_dict(row) for row in rows]
    await conn.execute(orders.insert(), rows)
    await outbox.add_many(
        conn, order_outbox, [(f"order.{o['status']}", o["id"], o) for o in placed]
    )
    return placed


class OrderService:
    """Orders, each stored with its event in one transaction."""

    def __init__(
        self,
        db: Database,
        *,
        publishers: Mapping[str, CommandPublisher],
        on_event: Callable[[], None],
        sync_batch_size: int = 200,
    ) -> None:
        self._db = db
        self._publishers = publishers
        self._on_event = on_event
        self._sync_orders: Coalescer[_SyncOrder, dict[str, Any]] = Coalescer(
            self._place_batch, max_batch=sync_batch_size, timeout=db.timeout * 2
        )

    async def place_order(
        self, order: PlaceOrder, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Reserve stock and store a confirmed order now; OutOfStock when there is too little.

        Concurrent calls are stored together, one transaction per batch (see shop.coalesce).
        """
        request = _SyncOrder(
            order_id_for(order.user_id, idempotency_key), order, keyed=idempotency_key is not None
        )
        return await self._sync_orders.submit(request)

    async def run_sync_orders(self, stopping: asyncio.Event) -> None:
        """The worker that stores batches of synchronous orders; runs until `stopping`."""
        await self._sync_orders.run(stopping)

    async def _place_batch(
        self, requests: Sequence[_SyncOrder]
    ) -> list[dict[str, Any] | Exception]:
        try:
            return await self._place_batch_once(requests)
        except IntegrityError:
            # A keyed twin was committed by another process meanwhile: now it is known.
            if not any(r.keyed for r in requests):
                raise
            return await self._place_batch_once(requests)

    async def _place_batch_once(
        self, requests: Sequence[_SyncOrder]
    ) -> list[dict[str, Any] | Exception]:
        outcomes: list[dict[str, Any] | Exception | None] = [None] * len(requests)
        first: dict[uuid.UUID, int] = {}  # the first request of each id in this batch
        async with self._db.transaction() as conn:
            known = await self._known_orders(conn, [r.order_id for r in requests if r.keyed])
            todo = []
            for i, r in enumerate(requests):
                if r.order_id in known:
                    outcomes[i] = _replay(known[r.order_id], r.order)
                elif r.order_id not in first:
                    first[r.order_id] = i
                    todo.append(i)
            allocations = await inventory.allocate_in_order(
                conn, [(requests[i].order.product_id, requests[i].order.quantity) for i in todo]
            )
            now = jsonutil.utcnow()
            rows, placed_at = [], []
            for i, allocation in zip(todo, allocations, strict=True):
                order = requests[i].order
                if allocation.reason == "unknown_product":
                    outcomes[i] = InvalidInput(
                        f"No product with id {order.product_id}.", field="product_id"
                    )
                elif allocation.reason == "out_of_stock":
                    outcomes[i] = OutOfStock(
                        f"Product {order.product_id} has too little "
                        f"stock for {order.quantity} unit(s)."
                    )
                else:
                    rows.append(
                        _order_row(
                            order_id=requests[i].order_id,
                            user_id=order.user_id,
                            product_id=order.product_id,
                            quantity=order.quantity,
                            channel="sync",
                            allocation=allocation,
                            created_at=now,
                        )
                    )
                    placed_at.append(i)
            for i, placed in zip(placed_at, await _store_orders(conn, rows), strict=True):
                outcomes[i] = placed
        self._stored(rows)
        answers: list[dict[str, Any] | Exception] = []
        for i, r in enumerate(requests):
            outcome = outcomes[i]
            if outcome is None:  # an in-batch twin answers as its first
                twin = outcomes[first[r.order_id]]
                assert twin is not None
                outcome = _replay(twin, r.order) if isinstance(twin, dict) else twin
            answers.append(outcome)
        return answers

    async def _known_orders(
        self, conn: AsyncConnection, order_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, dict[str, Any]]:
        if not order_ids:
            return {}
        rows = await conn.execute(
            select(*_COLUMNS).where(orders.c.id.in_([i.bytes for i in order_ids]))
        )
        return {uuid.UUID(bytes=row.id): order_as_dict(row) for row in rows}

    async def accept_order(
        self, order: PlaceOrder, *, channel: AsyncChannel, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Hand the order to a broker; it is stored when a consumer processes the command."""
        # Built without validating again: `order` was validated on the way in (2.2 us a request).
        command = OrderCommand.model_construct(
            id=order_id_for(order.user_id, idempotency_key),
            user_id=order.user_id,
            product_id=order.product_id,
            quantity=order.quantity,
            channel=channel,
            accepted_at=dt.datetime.now(dt.UTC),
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

    async def process_order_batch(self, commands: Sequence[OrderCommand]) -> Sequence[str | None]:
        """Store a batch of commands in one transaction, allocating stock in message order.

        Ids already stored (redelivery, a twin through the other broker) are skipped. Returns
        one verdict per command: None (done) for every one here. A twin committed concurrently
        makes the insert fail with IntegrityError; the caller retries the batch, which then
        skips it.
        """
        done: list[str | None] = [None] * len(commands)  # this version refuses nothing
        unique = list({command.id: command for command in reversed(commands)}.values())[::-1]
        if not unique:
            return done
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
                return done
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
            await _store_orders(conn, rows)
        self._stored(rows)
        return done

    def _stored(self, rows: list[dict[str, Any]]) -> None:
        """After a commit: count the stored orders and wake the outbox relay."""
        if not rows:
            return
        for (channel, status), n in collections.Counter(
            (r["channel"], r["status"]) for r in rows
        ).items():
            ORDERS_STORED.labels(channel, status).inc(n)
        self._on_event()

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
        async with self._db.read() as conn:
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
        async with self._db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        page = [order_as_dict(row) for row in rows[: query.limit]]
        next_cursor = page[-1]["id"] if len(rows) > query.limit else None
        return page, next_cursor
