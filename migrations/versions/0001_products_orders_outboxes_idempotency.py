"""products, orders, outboxes, idempotency

Revision ID: 0001
Revises:
Create Date: 2026-11-26 00:37:03.965906
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

TIMESTAMP = mysql.DATETIME(fsp=6)


def _create_outbox(name: str) -> None:
    """Each service's outbox has the same shape."""
    op.create_table(
        name,
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("event_key", sa.String(length=64), nullable=False),
        sa.Column("payload", mysql.MEDIUMBLOB(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("sent_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(f"ix_{name}_unsent", name, ["sent_at", "id"], unique=False)


def upgrade() -> None:
    op.create_table(
        "product_idempotency",
        sa.Column("key_hash", mysql.BINARY(32), nullable=False),
        sa.Column("request_hash", mysql.BINARY(32), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("body", mysql.MEDIUMBLOB(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("key_hash"),
    )
    _create_outbox("product_outbox")
    op.create_table(
        "products",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), server_default="", nullable=False),
        sa.Column("price", sa.Numeric(precision=12, scale=2), nullable=False),
        sa.Column("stock", sa.Integer(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("price >= 0", name="ck_products_price"),
        sa.CheckConstraint("stock >= 0", name="ck_products_stock"),
        sa.PrimaryKeyConstraint("id"),
    )
    _create_outbox("order_outbox")
    op.create_table(
        "orders",
        sa.Column("id", mysql.BINARY(16), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("product_id", sa.BigInteger(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("unit_price", sa.Numeric(precision=12, scale=2), nullable=True),
        sa.Column("total_price", sa.Numeric(precision=14, scale=2), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("quantity > 0", name="ck_orders_quantity"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_orders_status", "orders", ["status", "id"], unique=False)
    op.create_index("ix_orders_user", "orders", ["user_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_orders_user", table_name="orders")
    op.drop_index("ix_orders_status", table_name="orders")
    op.drop_table("orders")
    op.drop_index("ix_order_outbox_unsent", table_name="order_outbox")
    op.drop_table("order_outbox")
    op.drop_table("products")
    op.drop_index("ix_product_outbox_unsent", table_name="product_outbox")
    op.drop_table("product_outbox")
    op.drop_table("product_idempotency")
