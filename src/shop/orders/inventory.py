"""The one place the order service reads and changes `products` (the seam of a later split).

Products are read under a row lock, in id order (so two batches never wait on each other in a
cycle), and written back with the stock and version the domain decided, together with their
`product.stock_changed` events in the product service's outbox: the product service relays them
to `product-events` like its own. CHECK (stock >= 0) guards the stock all the same.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sqlalchemy import case, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shop import outbox
from shop.events import Event
from shop.orders.domain import Product
from shop.products.tables import product_outbox, products


async def lock_products(conn: AsyncConnection, product_ids: Collection[int]) -> dict[int, Product]:
    """The products with these ids that exist, locked until the transaction ends."""
    if not product_ids:
        return {}
    rows = await conn.execute(
        select(products.c.id, products.c.price, products.c.stock, products.c.version)
        .where(products.c.id.in_(sorted(product_ids)))
        .order_by(products.c.id)
        .with_for_update()
    )
    return {row.id: Product(row.id, row.price, row.stock, row.version) for row in rows}


async def save_stock(
    conn: AsyncConnection, changed: Iterable[Product], events: Iterable[Event]
) -> None:
    """Write the decided stock and version of locked products, and their events.

    One statement for the whole batch: an UPDATE per product was one round trip each (up to
    the batch's size), which made the batch's transaction, and its row locks, last longer.
    """
    changed = list(changed)
    if not changed:
        return
    stock = {p.id: p.stock for p in changed}
    version = {p.id: p.version for p in changed}
    await conn.execute(
        update(products)
        .where(products.c.id.in_(stock))
        .values(
            stock=case(stock, value=products.c.id),
            version=case(version, value=products.c.id),
        )
    )
    await outbox.add_events(conn, product_outbox, [e for e in events if e.aggregate == "product"])
