"""The database engine and the one way to run a unit of work against it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from sqlalchemy import DateTime, text
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shop.settings import Settings

# Microsecond timestamps, stored as naive UTC.
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def create_engine(settings: Settings) -> AsyncEngine:
    """An asyncmy-backed engine whose pool is sized for one service process."""
    return create_async_engine(
        settings.db_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=settings.db_timeout_seconds,
        pool_recycle=1800,
        # A restarted server leaves every pooled connection dead; a ping on checkout finds out
        # before a request does, which keeps /readyz and the first request after an outage honest.
        pool_pre_ping=True,
        # READ COMMITTED takes no gap locks: the outbox relay's FOR UPDATE SKIP LOCKED claim
        # would otherwise block every insert at the end of the outbox index while it publishes.
        isolation_level="READ COMMITTED",
        connect_args={"connect_timeout": max(1, int(settings.db_timeout_seconds))},
    )


@asynccontextmanager
async def unit_of_work(engine: AsyncEngine, *, timeout: float) -> AsyncIterator[AsyncConnection]:
    """One transaction that rolls back unless its block finishes; bounded by `timeout` seconds.

    asyncmy leaves a connection out of step with the server when a query is cancelled, so a
    cancelled (or timed-out) unit of work invalidates its connection instead of pooling it.
    """
    conn = await engine.connect()
    try:
        async with asyncio.timeout(timeout):
            async with conn.begin():
                yield conn
    except (asyncio.CancelledError, TimeoutError):
        await conn.invalidate()
        raise
    finally:
        await conn.close()


async def ping(engine: AsyncEngine, *, timeout: float) -> None:
    """Raise unless the database answers a trivial query within `timeout` seconds."""
    async with unit_of_work(engine, timeout=timeout) as conn:
        await conn.execute(text("SELECT 1"))


class Database:
    """The engine plus the per-transaction deadline every service call uses."""

    def __init__(self, engine: AsyncEngine, *, timeout: float) -> None:
        self.engine = engine
        self.timeout = timeout

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A unit of work: commits if the block finishes, rolls back otherwise."""
        return unit_of_work(self.engine, timeout=self.timeout)

    async def ping(self) -> None:
        await ping(self.engine, timeout=self.timeout)
