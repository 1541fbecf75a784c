"""The database engine and the one way to run a unit of work against it."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import DateTime, text
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shop.settings import Settings

T = TypeVar("T")

# Microsecond timestamps, stored as naive UTC.
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def create_engine(settings: Settings, *, autocommit: bool = False) -> AsyncEngine:
    """An asyncmy-backed engine whose pool is sized for one service process.

    Every round trip counts on the hot paths, so there is no ping on checkout and no rollback
    on return: a unit of work always ends its transaction, and a connection a restarted server
    dropped fails its first statement, which invalidates the pool (`Database.transact` then
    tries once more; elsewhere the request gets a 503 and the next one a fresh connection).
    `autocommit` engines serve single-statement reads, which then need no COMMIT either.
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
    """Raise unless the database answers a trivial query within `timeout` seconds.

    A pooled connection that a restarted server dropped fails once, and that failure empties
    the pool: the ping then asks again on a fresh connection, so a worker that had no request
    since the restart does not report the database down (each worker has its own pool).
    """
    for attempt in (1, 2):
        try:
            async with _connection(engine, timeout=timeout) as conn:
                await conn.execute(text("SELECT 1"))
            return
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise


async def insert_rows(
    conn: AsyncConnection, table: str, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]
) -> None:
    """INSERT `rows` (values in `columns` order) as one statement of SQL text.

    For the hot inserts (orders and outbox events, a batch at a time). SQLAlchemy's per-row
    parameter processing of an executemany was a tenth of a consumer's CPU; after that, the
    driver's own escaping (`literal()`, a type dispatch per value) cost 16-20 us per row, about
    a third of the sync path's batch work. The values are written as literals here instead
    (`sql_literal`), and the statement goes to the driver with no parameters.
    """
    if rows:
        values = ", ".join(["(" + ", ".join(map(sql_literal, row)) + ")" for row in rows])
        # no_parameters: the driver gets no parameter tuple, so it leaves `%` in the text alone.
        await conn.exec_driver_sql(
            f"{_insert_head(table, columns)}{values}", execution_options={"no_parameters": True}
        )


@functools.lru_cache(maxsize=64)
def _insert_head(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES "


_NEEDS_ESCAPE = re.compile("[\\\\'\x00\n\r\x1a]").search


def _string_literal(value: str) -> str:
    # The escapes MySQL reads in a quoted string (as the driver writes parameters), with
    # str.replace: `translate` with a table was 8 us for an event's 300-character payload.
    if _NEEDS_ESCAPE(value) is None:
        return f"'{value}'"
    escaped = (
        value.replace("\\", "\\\\")
        .replace("'", "\\'")
        .replace("\x00", "\\0")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\x1a", "\\Z")
    )
    return f"'{escaped}'"


def _datetime_literal(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        raise TypeError("timestamps are stored as naive UTC")
    return f"'{value.isoformat(' ')}'"


_LITERALS: dict[type, Callable[[Any], str]] = {
    type(None): lambda _: "NULL",
    bool: lambda value: "1" if value else "0",
    int: int.__repr__,
    Decimal: lambda value: format(value, "f"),
    str: _string_literal,
    bytes: lambda value: f"X'{value.hex()}'",
    dt.datetime: _datetime_literal,
}


def sql_literal(value: Any) -> str:
    """A value as MySQL SQL text: NULL, integers, decimals, quoted and escaped strings, bytes
    as hex, naive datetimes with microseconds. Anything else is a TypeError."""
    try:
        literal = _LITERALS[type(value)]
    except KeyError:
        raise TypeError(f"no SQL literal for {type(value).__name__}") from None
    return literal(value)


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

    async def transact(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`work` in a unit of work; once more on a fresh connection if the connection turns out
        to be gone before the COMMIT.

        That is safe: the server rolls back a transaction whose connection it lost (or never
        knew, after a restart), so nothing of the first attempt was applied. A connection lost
        during the COMMIT leaves the outcome unknown and is not retried. Without this the first
        batch after a database restart failed in every worker that had not used its pool since.
        """
        for attempt in (1, 2):
            committing = False
            try:
                async with self.transaction() as conn:
                    result = await work(conn)
                    committing = True
                return result
            except DBAPIError as exc:
                if attempt == 2 or committing or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for one consistent read statement (autocommit: no COMMIT round trip)."""
        return _connection(self.reads, timeout=self.timeout)

    async def ping(self) -> None:
        await ping(self.reads, timeout=self.timeout)

    async def dispose(self) -> None:
        await self.engine.dispose()
        await self.reads.dispose()
