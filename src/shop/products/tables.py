"""The product service's tables: products, its outbox, its idempotency records."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
)

from shop.storage.database import Timestamp
from shop.storage.idempotency import idempotency_table
from shop.storage.outbox import outbox_table

metadata = MetaData()

products = Table(
    "products",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("description", String(2000), nullable=False, server_default=""),
    Column("price", Numeric(12, 2), nullable=False),
    # NULL: stock not tracked. The order service changes it only through orders.inventory.
    Column("stock", Integer, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    # Incremented by every change, stock taken or released by orders included; events carry it.
    Column("version", BigInteger, nullable=False, server_default="1"),
    CheckConstraint("price >= 0", name="ck_products_price"),
    CheckConstraint("stock >= 0", name="ck_products_stock"),
    # The name search's index (migration 0004 makes it, with no stopwords).
    Index("ft_products_name", "name", mysql_prefix="FULLTEXT"),
)

product_outbox = outbox_table("product_outbox", metadata)
product_idempotency = idempotency_table("product_idempotency", metadata)
