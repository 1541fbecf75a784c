"""Expired Idempotency-Keys are purged, a batch at a time; fresh ones stay."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import jsonutil
from shop.orders.tables import order_keys
from shop.products.tables import product_idempotency
from shop.settings import Outbox
from shop.storage import expiry
from shop.storage.expiry import Expiry

pytestmark = pytest.mark.integration


async def test_expired_order_and_product_keys_are_purged_and_fresh_ones_stay(
    database: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(expiry, "BATCH", 7)  # several batches
    now = jsonutil.utcnow()
    ages = [dt.timedelta(hours=h) for h in (25, 30, 48, 24 * 7)] * 5 + [dt.timedelta(hours=1)] * 4
    mine = []
    async with database.begin() as conn:  # other tests' keys are all fresh: they stay too
        for age in ages:
            key = os.urandom(32)
            mine.append(key)
            await conn.execute(
                insert(order_keys).values(
                    key_hash=key,
                    order_id=os.urandom(16),
                    product_id=1,
                    quantity=1,
                    created_at=now - age,
                )
            )
            await conn.execute(
                insert(product_idempotency).values(
                    key_hash=key, request_hash=key, status=201, body=b"{}", created_at=now - age
                )
            )
    for table in (order_keys, product_idempotency):
        purge = Expiry(database, table.c.created_at, ttl_seconds=24 * 3600, outbox=Outbox())
        deleted = [await purge.purge_once() for _ in range(4)]
        assert deleted == [7, 7, 6, 0], table.name
        async with database.connect() as conn:
            ours = table.c.key_hash.in_(mine)
            left = await conn.scalar(select(func.count()).select_from(table).where(ours))
            oldest = await conn.scalar(select(func.min(table.c.created_at)).where(ours))
        assert left == 4
        assert oldest is not None
        assert now - oldest < dt.timedelta(hours=2)
