"""The product service's tables: products, its outbox, its idempotency records."""

from __future__ import annotations

import sqlalchemy as sa

from shop.storage.database import Timestamp
from shop.storage.idempotency import idempotency_table
from shop.storage.outbox import outbox_table

metadata = sa.MetaData()

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.String(2000), nullable=False, server_default=""),
    sa.Column("price", sa.Numeric(12, 2), nullable=False),
    # NULL: stock not tracked. The order service changes it only through orders.inventory.
    sa.Column("stock", sa.Integer, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    # Incremented by every change, stock taken or released by orders included; events carry it.
    sa.Column("version", sa.BigInteger, nullable=False, server_default="1"),
    sa.CheckConstraint("price >= 0", name="ck_products_price"),
    sa.CheckConstraint("stock >= 0", name="ck_products_stock"),
    # The name search's index (migration 0004 makes it, with no stopwords).
    sa.Index("ft_products_name", "name", mysql_prefix="FULLTEXT"),
)

product_outbox = outbox_table("product_outbox", metadata)
product_idempotency = idempotency_table("product_idempotency", metadata)
