"""The order service's tables: orders and its outbox."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.mysql import BINARY

from shop.storage.database import Timestamp
from shop.storage.outbox import outbox_table

metadata = sa.MetaData()
BinaryUuid = sa.LargeBinary(16).with_variant(BINARY(16), "mysql")  # a UUID in 16 bytes

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", BinaryUuid, primary_key=True),  # a UUIDv7 made at intake: time-ordered
    sa.Column("user_id", sa.BigInteger, nullable=False),
    # No foreign key: products belong to another service (see docs/architecture.md).
    sa.Column("product_id", sa.BigInteger, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64), nullable=True),
    sa.Column("unit_price", sa.Numeric(12, 2), nullable=True),
    # Wide enough for every total the domain allows (shop.orders.domain.MAX_TOTAL).
    sa.Column("total_price", sa.Numeric(14, 2), nullable=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    # Incremented by every change (confirmed or rejected: 1, cancelled: 2); events carry it.
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.CheckConstraint("quantity > 0", name="ck_orders_quantity"),
    sa.Index("ix_orders_user", "user_id", "id"),
    sa.Index("ix_orders_status", "status", "id"),
)

# An Idempotency-Key (hashed with the user it belongs to), the order id it was given and the
# request it came with. Asynchronous intake writes it before the order is stored.
order_keys = sa.Table(
    "order_keys",
    metadata,
    sa.Column("key_hash", sa.LargeBinary(32).with_variant(BINARY(32), "mysql"), primary_key=True),
    sa.Column("order_id", BinaryUuid, nullable=False),
    sa.Column("product_id", sa.BigInteger, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index("ix_order_keys_created_at", "created_at"),  # keys expire (shop.storage.expiry)
)

# The id an asynchronous retry was given at intake, naming the order its key had placed first.
order_aliases = sa.Table(
    "order_aliases",
    metadata,
    sa.Column("id", BinaryUuid, primary_key=True),
    sa.Column("order_id", BinaryUuid, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
)

order_outbox = outbox_table("order_outbox", metadata)
