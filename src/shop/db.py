"""The database engine and the one way to run a unit of work against it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from sqlalchemy import DateTime, text
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shop.settings import Settings

# Microsecond timestamps, stored as naive UTC.
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def create_engine(settings: Settings, *, autocommit: bool = False) -> AsyncEngine:
    """An asyncmy-backed engine whose pool is sized for one service process.

    Every round trip counts on the hot paths, so there is no ping on checkout and no rollback
    on return: a unit of work always ends its transaction, and a connection a restarted server
    dropped fails its first statement, which invalidates the pool (the request gets a 503 and
    the next one a fresh connection). `autocommit` engines serve single-statement reads, which
    then need no COMMIT either.
    """
    return create_async_engine(
        settings.db_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=settings.db_timeout_seconds,
        pool_recycle=1800,
        pool_reset_on_return=None,
        # READ COMMITTED takes no gap locks: the outbox relay's FOR UPDATE SKIP LOCKED claim
        # would otherwise block every insert at the end of the outbox index while it publishes.
        isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED",
        connect_args={"connect_timeout": max(1, int(settings.db_timeout_seconds))},
    )


@asynccontextmanager
async def unit_of_work(engine: AsyncEngine, *, timeout: float) -> AsyncIterator[AsyncConnection]:
    """One transaction that rolls back unless its block finishes; bounded by `timeout` seconds.

    asyncmy leaves a connection out of step with the server when a query is cancelled, so a
    cancelled (or timed-out) unit of work invalidates its connection instead of pooling it.
    """
    async with _connection(engine, timeout=timeout) as conn, conn.begin():
        yield conn


@asynccontextmanager
async def _connection(engine: AsyncEngine, *, timeout: float) -> AsyncIterator[AsyncConnection]:
    """A pooled connection, bounded by `timeout` seconds; invalidated if cancelled or late."""
    conn = await engine.connect()
    try:
        async with asyncio.timeout(timeout):
            yield conn
    except (asyncio.CancelledError, TimeoutError):
        await conn.invalidate()
        raise
    finally:
        await conn.close()


async def ping(engine: AsyncEngine, *, timeout: float) -> None:
    """Raise unless the database answers a trivial query within `timeout` seconds."""
    async with _connection(engine, timeout=timeout) as conn:
        await conn.execute(text("SELECT 1"))


async def insert_rows(
    conn: AsyncConnection, table: str, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]
) -> None:
    """INSERT `rows` (values in `columns` order) as one statement of SQL text.

    For the hot inserts (orders and outbox events, a batch at a time): SQLAlchemy's per-row
    parameter processing of an executemany was a tenth of a consumer's CPU; the driver
    escapes the values (bytes, str, int, Decimal, datetime, None) itself.
    """
    if rows:
        await conn.exec_driver_sql(
            _insert_sql(table, columns, len(rows)), tuple(v for row in rows for v in row)
        )


@functools.lru_cache(maxsize=1024)
def _insert_sql(table: str, columns: tuple[str, ...], count: int) -> str:
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([row] * count)


class Database:
    """Two pools: transactions, and autocommit single-statement reads; one deadline for both."""

    def __init__(self, engine: AsyncEngine, *, reads: AsyncEngine, timeout: float) -> None:
        self.engine = engine
        self.reads = reads
        self.timeout = timeout

    @classmethod
    def connect(cls, settings: Settings) -> Database:
        return cls(
            create_engine(settings),
            reads=create_engine(settings, autocommit=True),
            timeout=settings.db_timeout_seconds,
        )

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A unit of work: commits if the block finishes, rolls back otherwise."""
        return unit_of_work(self.engine, timeout=self.timeout)

    def read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for one consistent read statement (autocommit: no COMMIT round trip)."""
        return _connection(self.reads, timeout=self.timeout)

    async def ping(self) -> None:
        await ping(self.reads, timeout=self.timeout)

    async def dispose(self) -> None:
        await self.engine.dispose()
        await self.reads.dispose()
