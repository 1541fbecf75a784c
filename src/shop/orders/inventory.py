"""The one place the order service reads and changes `products` (the seam of a later split).

Products are read under a row lock, in id order (so two batches never wait on each other in a
cycle), and written back with the stock and version the domain decided, together with their
`product.stock_changed` events in the product service's outbox: the product service relays them
to `product-events` like its own. CHECK (stock >= 0) guards the stock all the same.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from shop.events import Event
from shop.orders.domain import Product
from shop.products.tables import product_outbox
from shop.storage import outbox
from shop.storage.database import in_list, run_text, sql_literal


async def lock_products(conn: AsyncConnection, product_ids: Collection[int]) -> dict[int, Product]:
    """The products with these ids that exist, locked until the transaction ends."""
    if not product_ids:
        return {}
    return products_from((await run_text(conn, lock_sql(product_ids))).all())


def lock_sql(product_ids: Collection[int]) -> str:
    """The products with these ids, locked in id order; its rows go to `products_from`."""
    return (
        "SELECT id, price, stock, version FROM products "
        f"WHERE id IN {in_list(sorted(product_ids))} ORDER BY id FOR UPDATE"
    )


def products_from(rows: Sequence[Sequence[Any]]) -> dict[int, Product]:
    return {row[0]: Product(row[0], row[1], row[2], row[3]) for row in rows}


def save_stock_statements(changed: Iterable[Product], events: Iterable[Event]) -> list[str]:
    """The decided stock and version of locked products, and their events, as SQL text.

    One UPDATE for the whole batch: an UPDATE per product was one round trip each (up to the
    batch's size), holding the batch's row locks that much longer. The values are literals:
    building and compiling a CASE expression of a new size took longer than running it.
    """
    changed = list(changed)
    if not changed:
        return []
    stock = " ".join(f"WHEN {p.id} THEN {sql_literal(p.stock)}" for p in changed)
    version = " ".join(f"WHEN {p.id} THEN {p.version}" for p in changed)
    update = (
        f"UPDATE products SET stock = CASE id {stock} END, version = CASE id {version} END "
        f"WHERE id IN {in_list(p.id for p in changed)}"
    )
    stock_events = [e for e in events if e.aggregate == "product"]
    if not stock_events:
        return [update]
    return [update, outbox.insert_events_sql(product_outbox, stock_events)]


async def save_stock(
    conn: AsyncConnection, changed: Iterable[Product], events: Iterable[Event]
) -> None:
    """Write the decided stock and version of locked products, and their events."""
    for statement in save_stock_statements(changed, events):
        await run_text(conn, statement)
