"""The one place the order service reads and changes `products` (the seam of a later split).

Products are read under a row lock, in id order (so two batches never wait on each other in a
cycle), and written back with the stock and version the domain decided, together with their
`product.stock_changed` events in the product service's outbox: the product service relays them
to `product-events` like its own. CHECK (stock >= 0) guards the stock all the same.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from shop.events import Event
from shop.orders.domain import Product
from shop.products.tables import product_outbox
from shop.storage import outbox
from shop.storage.database import in_list, sql_literal


def lock_sql(product_ids: Collection[int]) -> str:
    """The products with these ids, locked in id order; its rows go to `products_from`."""
    return (
        "SELECT id, price, stock, version FROM products "
        f"WHERE id IN {in_list(sorted(product_ids))} ORDER BY id FOR UPDATE"
    )


def products_from(rows: Sequence[Sequence[Any]]) -> dict[int, Product]:
    return {row[0]: Product(row[0], row[1], row[2], row[3]) for row in rows}


def save_stock_statements(changed: Collection[Product], events: Iterable[Event]) -> list[str]:
    """The decided stock and version of locked products, and their events, as SQL text.

    One UPDATE for the whole batch: an UPDATE per product was one round trip each (up to the
    batch's size), holding the batch's row locks that much longer. The values are literals:
    building and compiling a CASE expression of a new size took longer than running it.
    """
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
