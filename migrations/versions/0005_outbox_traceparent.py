"""a traceparent column on both outboxes

An outbox row keeps the W3C traceparent of the transaction that wrote it (NULL when tracing is
off or the trace was not sampled), so that the relay's publish of its events joins that trace
(`shop.tracing`, `shop.storage.outbox`). 55 characters: version, trace id, span id and flags.
A nullable column at the end of the table: MariaDB 10.11 and MySQL 8.4 add it in place,
without copying the table.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None

TABLES = ("order_outbox", "product_outbox")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("traceparent", sa.String(55), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "traceparent")
