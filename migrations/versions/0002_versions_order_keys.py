"""aggregate versions, order keys and aliases

Products and orders carry a version that every change increments, so the events they emit can
be ordered per aggregate. An Idempotency-Key now maps to its order through a stored record
(`order_keys`, written by the first request under the key: asynchronous intake claims it before
publishing) instead of a hash-derived id, so every order id is time-ordered. A command that
could not claim its key (the database was down at intake) and turns out to repeat a known key is
stored as an alias of that order (`order_aliases`), so the id its 202 named still answers.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

TIMESTAMP = mysql.DATETIME(fsp=6)


def upgrade() -> None:
    op.add_column(
        "products", sa.Column("version", sa.BigInteger(), server_default="1", nullable=False)
    )
    op.add_column("orders", sa.Column("version", sa.Integer(), server_default="1", nullable=False))
    op.create_table(
        "order_keys",
        sa.Column("key_hash", mysql.BINARY(32), nullable=False),
        sa.Column("order_id", mysql.BINARY(16), nullable=False),
        sa.Column("product_id", sa.BigInteger(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("key_hash"),
    )
    op.create_table(
        "order_aliases",
        sa.Column("id", mysql.BINARY(16), nullable=False),
        sa.Column("order_id", mysql.BINARY(16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("order_aliases")
    op.drop_table("order_keys")
    op.drop_column("orders", "version")
    op.drop_column("products", "version")
