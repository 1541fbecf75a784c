"""indexes for expiring Idempotency-Keys

Idempotency-Keys expire after IDEMPOTENCY_KEY_TTL_SECONDS (24 h by default); a purge deletes the
expired rows a batch at a time, which needs their creation time indexed. (Order aliases stay:
the id a 202 named keeps answering.)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None

INDEXED = ("order_keys", "product_idempotency")


def upgrade() -> None:
    for table in INDEXED:
        op.create_index(f"ix_{table}_created_at", table, ["created_at"])


def downgrade() -> None:
    for table in INDEXED:
        op.drop_index(f"ix_{table}_created_at", table_name=table)
