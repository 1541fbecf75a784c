"""The one place the order service changes `products.stock` (the seam of a later split).

Tracked stock (not NULL) is only ever taken under a row lock, after checking it suffices, so it
cannot go below zero (and CHECK (stock >= 0) would refuse it); untracked stock (NULL) always
allows the order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shop.products.tables import products


@dataclass(frozen=True, slots=True)
class Allocation:
    """The outcome for one order line: the price it was taken at, or why it was refused."""

    unit_price: Decimal | None
    reason: str | None  # None when allocated; "out_of_stock" or "unknown_product" otherwise

    @property
    def allocated(self) -> bool:
        return self.reason is None


async def allocate_in_order(
    conn: AsyncConnection, lines: Sequence[tuple[int, int]]
) -> list[Allocation]:
    """Allocate (product_id, quantity) lines in the given order, locking each product once.

    Products are locked in id order, so two batches never wait on each other in a cycle.
    """
    product_ids = sorted({product_id for product_id, _ in lines})
    rows = (
        await conn.execute(
            select(products.c.id, products.c.price, products.c.stock)
            .where(products.c.id.in_(product_ids))
            .order_by(products.c.id)
            .with_for_update()
        )
    ).all()
    price = {row.id: row.price for row in rows}
    stock: dict[int, int | None] = {row.id: row.stock for row in rows}
    taken: dict[int, int] = {}
    outcomes = []
    for product_id, quantity in lines:
        if product_id not in price:
            outcomes.append(Allocation(None, "unknown_product"))
            continue
        left = stock[product_id]
        if left is not None:
            if left < quantity:
                outcomes.append(Allocation(price[product_id], "out_of_stock"))
                continue
            stock[product_id] = left - quantity
        taken[product_id] = taken.get(product_id, 0) + quantity
        outcomes.append(Allocation(price[product_id], None))
    await _take(conn, ((pid, qty) for pid, qty in taken.items() if stock[pid] is not None))
    return outcomes


async def _take(conn: AsyncConnection, amounts: Iterable[tuple[int, int]]) -> None:
    # The rows are locked and were checked above; CHECK (stock >= 0) guards all the same.
    params = [{"pid": pid, "qty": qty} for pid, qty in amounts]
    if params:
        await conn.execute(
            update(products)
            .where(products.c.id == bindparam("pid"))
            .values(stock=products.c.stock - bindparam("qty")),
            params,
        )


async def release_stock(conn: AsyncConnection, *, product_id: int, quantity: int) -> None:
    """Give `quantity` back to a product's tracked stock (a cancelled order)."""
    await conn.execute(
        update(products)
        .where(products.c.id == product_id)
        .where(products.c.stock.is_not(None))
        .values(stock=products.c.stock + quantity)
    )
