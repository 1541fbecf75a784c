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

from shop.db import Timestamp
from shop.outbox import outbox_table

metadata = MetaData()

STATUSES = ("pending", "confirmed", "rejected", "cancelled")
CHANNELS = ("sync", "kafka", "rabbitmq")

orders = Table(
    "orders",
    metadata,
    # A UUID made at intake (v7, or derived from user and Idempotency-Key), stored in 16 bytes.
    Column("id", LargeBinary(16).with_variant(BINARY(16), "mysql"), primary_key=True),
    Column("user_id", BigInteger, nullable=False),
    # No foreign key: products belong to another service (see docs/architecture.md).
    Column("product_id", BigInteger, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("unit_price", Numeric(12, 2), nullable=True),
    Column("total_price", Numeric(14, 2), nullable=True),
    Column("channel", String(16), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    CheckConstraint("quantity > 0", name="ck_orders_quantity"),
    Index("ix_orders_user", "user_id", "id"),
    Index("ix_orders_status", "status", "id"),
)

order_outbox = outbox_table("order_outbox", metadata)
