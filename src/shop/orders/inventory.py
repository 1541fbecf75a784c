"""The one place the order service reads and changes `products` (the seam of a later split).

Products are read under a row lock, in id order (so two batches never wait on each other in a
cycle), and written back with the stock and version the domain decided, together with their
`product.stock_changed` events in the product service's outbox: the product service relays them
to `product-events` like its own. CHECK (stock >= 0) guards the stock all the same.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shop import outbox
from shop.db import in_list, sql_literal
from shop.events import Event
from shop.orders.domain import Product
from shop.products.tables import product_outbox, products


async def lock_products(conn: AsyncConnection, product_ids: Collection[int]) -> dict[int, Product]:
    """The products with these ids that exist, locked until the transaction ends."""
    if not product_ids:
        return {}
    rows = await conn.execute(_LOCK, {"ids": sorted(product_ids)})
    return {row.id: Product(row.id, row.price, row.stock, row.version) for row in rows}


def lock_sql(product_ids: Collection[int]) -> str:
    """The products with these ids, locked in id order; its rows go to `products_from`."""
    return (
        "SELECT id, price, stock, version FROM products "
        f"WHERE id IN {in_list(sorted(product_ids))} ORDER BY id FOR UPDATE"
    )


def products_from(rows: Sequence[Sequence[Any]]) -> dict[int, Product]:
    return {row[0]: Product(row[0], row[1], row[2], row[3]) for row in rows}


def save_stock_statements(changed: Iterable[Product], events: Iterable[Event]) -> list[str]:
    """The decided stock and version of locked products, and their events, as SQL text: one
    UPDATE for the whole batch (see `save_stock`)."""
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
    return [update, outbox.insert_events_sql(product_outbox, stock_events)]


_LOCK = (  # built once, not per batch
    select(products.c.id, products.c.price, products.c.stock, products.c.version)
    .where(products.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(products.c.id)
    .with_for_update()
)


async def save_stock(
    conn: AsyncConnection, changed: Iterable[Product], events: Iterable[Event]
) -> None:
    """Write the decided stock and version of locked products, and their events.

    One statement for the whole batch: an UPDATE per product was one round trip each (up to
    the batch's size), holding the batch's row locks that much longer. It is sent as SQL text:
    building and compiling a CASE expression of a new size took longer than running it.
    """
    changed = list(changed)
    if not changed:
        return
    await conn.exec_driver_sql(_update_stock_sql(len(changed)), _update_stock_params(changed))
    await outbox.add_events(conn, product_outbox, [e for e in events if e.aggregate == "product"])


@functools.cache
def _update_stock_sql(count: int) -> str:
    whens = " ".join(["WHEN %s THEN %s"] * count)
    ids = ", ".join(["%s"] * count)
    return (
        f"UPDATE products SET stock = CASE id {whens} END, version = CASE id {whens} END "
        f"WHERE id IN ({ids})"
    )


def _update_stock_params(changed: list[Product]) -> tuple[int | None, ...]:
    stock = [v for p in changed for v in (p.id, p.stock)]
    version = [v for p in changed for v in (p.id, p.version)]
    return (*stock, *version, *(p.id for p in changed))
