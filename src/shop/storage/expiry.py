"""Rows that expire: deleted once older than their time to live, a batch per transaction.

Published outbox events (after OUTBOX_RETENTION_SECONDS) and Idempotency-Keys (after
IDEMPOTENCY_KEY_TTL_SECONDS; a retry after that is a new request) both go this way. Each batch
is its own short transaction, so the purge never holds many locks; a full batch means more may
wait and the next follows at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from sqlalchemy import Column, delete
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import jsonutil
from shop.clock import SYSTEM
from shop.settings import Outbox
from shop.storage.database import unit_of_work

log = logging.getLogger(__name__)

BATCH = 5000


class Expiry:
    """Deletes the rows of `column`'s table whose `column` is older than `ttl_seconds`."""

    def __init__(
        self,
        engine: AsyncEngine,
        column: Column[dt.datetime],
        *,
        ttl_seconds: float,
        outbox: Outbox,
    ) -> None:
        self._engine = engine
        self._column = column
        self._ttl = dt.timedelta(seconds=ttl_seconds)
        self._every = outbox.purge_every_seconds
        self._timeout = outbox.purge_timeout_seconds

    async def purge_once(self) -> int:
        """Delete up to BATCH expired rows; how many were deleted."""
        cutoff = jsonutil.utcnow() - self._ttl
        async with unit_of_work(self._engine, timeout=self._timeout) as conn:
            result = await conn.execute(
                delete(self._column.table)
                .where(self._column < cutoff)
                .with_dialect_options(mysql_limit=BATCH)
            )
        return int(result.rowcount)

    async def run(self, stopping: asyncio.Event) -> None:
        """Purge every OUTBOX_PURGE_EVERY_SECONDS until `stopping` is set; an outage waits for
        the next round."""
        while not stopping.is_set():
            try:
                while not stopping.is_set() and await self.purge_once() == BATCH:
                    pass
            except Exception as exc:
                log.warning("purge of expired %s rows failed (%s)", self._column.table.name, exc)
            await SYSTEM.sleep(self._every, stopping)
