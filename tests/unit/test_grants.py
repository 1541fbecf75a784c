"""The rights `shop migrate` grants each service's role: every table to its owner, and of the
catalogue to the order service only what its inventory statements touch."""

from __future__ import annotations

import re
from decimal import Decimal

from shop.events import Event
from shop.orders import inventory
from shop.orders.domain import Product
from shop.orders.tables import metadata as order_tables
from shop.products.tables import metadata as product_tables
from shop.storage.migrations import RIGHTS, ROWS, grant_statements

PRODUCTS, ORDERS = "shop_products_rights", "shop_orders_rights"


def test_each_service_owns_the_rows_of_its_own_tables() -> None:
    for role, tables in ((PRODUCTS, product_tables), (ORDERS, order_tables)):
        for table in tables.tables:
            assert RIGHTS[role][table] == ROWS, (role, table)


def test_the_product_service_gets_nothing_of_the_orders() -> None:
    assert set(RIGHTS[PRODUCTS]) == set(product_tables.tables)


def test_the_order_service_may_change_exactly_the_columns_its_inventory_writes() -> None:
    """A column the inventory starts to write without a grant would fail in production only."""
    statements = inventory.save_stock_statements(
        [Product(1, Decimal(10), 5, 2)],
        [Event("product", "product.stock_changed", "1", 2, {"stock": 5})],
    )
    update = re.fullmatch(r"UPDATE products SET (.*) WHERE id IN .*", statements[0])
    assert update is not None
    written = set(re.findall(r"(\w+) = CASE id", update.group(1)))
    granted = re.fullmatch(r"SELECT, UPDATE \((.*)\)", RIGHTS[ORDERS]["products"])
    assert granted is not None
    assert written == {c.strip() for c in granted.group(1).split(",")} == {"stock", "version"}
    # ... and to the product service's outbox it may only add (the stock events).
    assert statements[1].startswith("INSERT INTO product_outbox ")
    assert RIGHTS[ORDERS]["product_outbox"] == "INSERT"
    assert set(RIGHTS[ORDERS]) - set(order_tables.tables) == {"products", "product_outbox"}


def test_grants_name_the_database_and_the_role() -> None:
    assert grant_statements("shop_x", ORDERS)[0] == (
        f"GRANT {ROWS} ON `shop_x`.`orders` TO {ORDERS}"
    )
