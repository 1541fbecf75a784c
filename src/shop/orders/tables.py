"""The order service's tables: orders and its outbox."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
)
from sqlalchemy.dialects.mysql import BINARY

from shop.storage.database import Timestamp
from shop.storage.outbox import outbox_table

metadata = MetaData()
BinaryUuid = LargeBinary(16).with_variant(BINARY(16), "mysql")  # a UUID in 16 bytes

orders = Table(
    "orders",
    metadata,
    Column("id", BinaryUuid, primary_key=True),  # a UUIDv7 made at intake: time-ordered
    Column("user_id", BigInteger, nullable=False),
    # No foreign key: products belong to another service (see docs/architecture.md).
    Column("product_id", BigInteger, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("unit_price", Numeric(12, 2), nullable=True),
    # Wide enough for every total the domain allows (shop.orders.domain.MAX_TOTAL).
    Column("total_price", Numeric(14, 2), nullable=True),
    Column("channel", String(16), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    # Incremented by every change (confirmed or rejected: 1, cancelled: 2); events carry it.
    Column("version", Integer, nullable=False, server_default="1"),
    CheckConstraint("quantity > 0", name="ck_orders_quantity"),
    Index("ix_orders_user", "user_id", "id"),
    Index("ix_orders_status", "status", "id"),
)

# An Idempotency-Key (hashed with the user it belongs to), the order id it was given and the
# request it came with. Asynchronous intake writes it before the order is stored.
order_keys = Table(
    "order_keys",
    metadata,
    Column("key_hash", LargeBinary(32).with_variant(BINARY(32), "mysql"), primary_key=True),
    Column("order_id", BinaryUuid, nullable=False),
    Column("product_id", BigInteger, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Index("ix_order_keys_created_at", "created_at"),  # keys expire (shop.storage.expiry)
)

# The id an asynchronous retry was given at intake, naming the order its key had placed first.
order_aliases = Table(
    "order_aliases",
    metadata,
    Column("id", BinaryUuid, primary_key=True),
    Column("order_id", BinaryUuid, nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

order_outbox = outbox_table("order_outbox", metadata)
