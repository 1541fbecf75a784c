"""Alembic environment: runs migrations on the async engine built from the shop's settings."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from shop.orders.tables import metadata as order_metadata
from shop.products.tables import metadata as product_metadata
from shop.settings import load_settings

target_metadata = [product_metadata, order_metadata]


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    attributes = context.config.attributes
    db = attributes.get("db") or load_settings().db
    engine = create_async_engine(db.migration_url, connect_args=db.connect_args())
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


asyncio.run(_run_online())
