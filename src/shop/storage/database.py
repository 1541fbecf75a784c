"""The database engine and the one way to run a unit of work against it."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

import tenacity
from asyncmy import errors as asyncmy_errors
from opentelemetry.trace import SpanKind
from prometheus_client import Counter
from sqlalchemy import CursorResult, DateTime, event, text
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shop import tracing
from shop.clock import SYSTEM, Clock
from shop.settings import Database as DbSettings
from shop.settings import Settings
from shop.supervision import failure

T = TypeVar("T")
log = logging.getLogger(__name__)

POOL_WAITS = Counter(
    "db_pool_waits_total", "Connection checkouts that waited over 1 ms for a connection", ["pool"]
)
POOL_WAITED = Counter("db_pool_wait_seconds_total", "Seconds those checkouts waited", ["pool"])
WAIT_COUNTED = 0.001  # seconds: a checkout of a free pooled connection takes tens of microseconds


# Microsecond timestamps, stored as naive UTC.
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")

# Server errors after which the transaction is known to be rolled back, so running it again is
# safe: a deadlock victim, and on Galera a transaction refused by certification (also 1213)
# or a statement refused by a node that is not (or no longer) part of the primary component.
WSREP_NOT_READY = 1047
ROLLED_BACK = frozenset({1213, WSREP_NOT_READY})  # 1213: ER_LOCK_DEADLOCK
# The client could not reach the server, or lost it: before COMMIT was sent the server rolled
# the transaction back (or never saw it); during the COMMIT the outcome is unknown.
CONNECTION_LOST = frozenset({2002, 2003, 2006, 2013, 2055})
_GONE = CONNECTION_LOST | {WSREP_NOT_READY}
# "Got error during COMMIT": the outcome is unknown, never retried.
COMMIT_FAILED = 1180
# A statement stopped by its time limit (`STATEMENT_SECONDS`): MariaDB's max_statement_time,
# MySQL's MAX_EXECUTION_TIME. The connection stays usable.
STATEMENT_TIMEOUT = frozenset({1969, 3024})
# An execution option: the server stops the statement (a SELECT) after this many seconds.
STATEMENT_SECONDS = "shop_statement_seconds"


def error_code(exc: BaseException) -> int | None:
    """The MySQL error number of a driver error wrapped by SQLAlchemy (None if it has none)."""
    orig = getattr(exc, "orig", exc)
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def may_run_again(exc: DBAPIError, *, committing: bool) -> bool:
    """Whether a unit of work that failed with `exc` is known not to have committed."""
    code = error_code(exc)
    if code == COMMIT_FAILED:
        return False
    if code in ROLLED_BACK:
        return True
    lost = exc.connection_invalidated or code in CONNECTION_LOST
    return lost and not committing


def _drop_connections_of_a_node_out_of_the_cluster(context: ExceptionContext) -> None:
    # A Galera node that left the primary component answers 1047 to everything; treating that
    # as a disconnect empties the pool, so the next connection goes through HAProxy to the
    # node that now takes writes.
    if context.original_exception is not None and (
        error_code(context.original_exception) == WSREP_NOT_READY
    ):
        context.is_disconnect = True


def _with_time_limit(
    conn: Any, _cursor: Any, statement: str, parameters: Any, context: Any, _executemany: bool
) -> tuple[str, Any]:
    """A SELECT run with the execution option STATEMENT_SECONDS, as the server's flavour
    writes a time limit (SQLAlchemy reads which it is once per engine, when it first connects):
    MariaDB ignores MySQL's optimizer hint, and MySQL has no `SET STATEMENT`."""
    seconds = None if context is None else context.execution_options.get(STATEMENT_SECONDS)
    if seconds is None:
        return statement, parameters
    if conn.dialect.is_mariadb:
        return f"SET STATEMENT max_statement_time={seconds:.3f} FOR {statement}", parameters
    hint = f"SELECT /*+ MAX_EXECUTION_TIME({max(1, round(seconds * 1000))}) */"
    return statement.replace("SELECT", hint, 1), parameters


def create_engine(settings: Settings, *, autocommit: bool = False) -> AsyncEngine:
    """An asyncmy-backed engine whose pool is sized for one service process.

    Every round trip counts on the hot paths, so there is no ping on checkout and no rollback
    on return: a unit of work always ends its transaction, and a connection a restarted server
    dropped fails its first statement, which invalidates the pool (`Database.transact` then
    runs its work again; elsewhere the request gets a 503 and the next one a fresh connection).
    `autocommit` engines serve single-statement reads, which then need no COMMIT either.
    """
    engine = create_async_engine(
        settings.db.url,
        pool_size=settings.db.pool_size,
        max_overflow=settings.db.pool_size,
        pool_timeout=settings.db.timeout_seconds,
        pool_recycle=settings.db.recycle_seconds,
        pool_reset_on_return=None,
        # READ COMMITTED takes no gap locks: the outbox relay's FOR UPDATE SKIP LOCKED claim
        # would otherwise block every insert at the end of the outbox index while it publishes.
        isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED",
        pool_logging_name="reads" if autocommit else "transactions",  # its metrics' `pool`
        connect_args=settings.db.connect_args(),
    )
    event.listen(engine.sync_engine, "handle_error", _drop_connections_of_a_node_out_of_the_cluster)
    event.listen(engine.sync_engine, "before_cursor_execute", _with_time_limit, retval=True)
    return engine


@asynccontextmanager
async def unit_of_work(engine: AsyncEngine, *, timeout: float) -> AsyncIterator[AsyncConnection]:
    """One transaction that rolls back unless its block finishes; bounded by `timeout` seconds.

    asyncmy leaves a connection out of step with the server when a query is cancelled, so a
    cancelled (or timed-out) unit of work invalidates its connection instead of pooling it.
    """
    async with _connection(engine, timeout=timeout) as conn, conn.begin():
        yield conn


@asynccontextmanager
async def statements_unit(
    engine: AsyncEngine,
    *,
    timeout: float,
    on_commit: Callable[[], None] = lambda: None,
    held: HeldConnections | None = None,
) -> AsyncIterator[Statements]:
    """One transaction of SQL text on a pooled connection's driver connection (`Statements`),
    rolled back unless its block commits; bounded by `timeout` seconds. With `held`, the
    connection comes from and goes back to those kept between units.

    Driver errors come out as SQLAlchemy's DBAPIError (so `may_run_again` and the callers'
    handlers read them as they read the engine's); a connection that was lost, or that a
    node out of the cluster holds, or whose unit was cancelled or late (asyncmy leaves it out
    of step), is invalidated, never used again.
    """
    checked_out = await (held.take() if held is not None else _checked_out(engine))
    conn = checked_out.conn
    statements = Statements(checked_out.driver, on_commit=on_commit)
    reusable = False
    try:
        async with asyncio.timeout(timeout):
            yield statements
            await statements.rollback()  # a no-op when the block committed, as it should
        reusable = True
    except (asyncio.CancelledError, TimeoutError):
        await conn.invalidate()
        raise
    except Exception as exc:
        driver = isinstance(exc, asyncmy_errors.Error)
        lost = driver and _connection_gone(exc)
        if lost:
            # As SQLAlchemy does on a disconnect: the pool's other connections went with this
            # one (a restarted server, a fail-over), so the next unit anywhere gets a fresh
            # connection instead of meeting a dead one (which a plain read answers 503).
            await conn.invalidate()
            await engine.dispose()
        elif not await statements.rollback():
            await conn.invalidate()
        if driver:
            raise DBAPIError.instance(
                statements.last, None, exc, asyncmy_errors.Error, connection_invalidated=lost
            ) from exc
        raise
    finally:
        if reusable and held is not None:
            await held.give_back(checked_out)
        else:
            await conn.close()


class _CheckedOut(NamedTuple):
    conn: AsyncConnection
    driver: Any  # the asyncmy connection under it
    since: float  # when it was checked out of the pool


async def _checkout(engine: AsyncEngine) -> AsyncConnection:
    """A connection from the engine's pool; a checkout that waited over 1 ms (for a free
    connection of a full pool, or for a new connection's handshake) is counted."""
    started = time.perf_counter()
    conn = await engine.connect()
    waited = time.perf_counter() - started
    if waited > WAIT_COUNTED:
        pool = engine.pool.logging_name or "default"
        POOL_WAITS.labels(pool).inc()
        POOL_WAITED.labels(pool).inc(waited)
    return conn


async def _checked_out(engine: AsyncEngine) -> _CheckedOut:
    conn = await _checkout(engine)
    try:
        raw = await conn.get_raw_connection()
    except BaseException:
        await conn.close()
        raise
    return _CheckedOut(conn, raw.driver_connection, time.monotonic())


class HeldConnections:
    """A few pooled connections that the order batches keep checked out between batches.

    Checking a connection out of SQLAlchemy's pool and back (with its driver connection) cost
    about 60 us of CPU a batch; at 1,500 sync orders a second a batch holds one or two orders.
    At most `keep` wait here; one older than `recycle` seconds goes back to the pool's own
    handling (as `pool_recycle` would), and an invalidated one is never kept.
    """

    def __init__(self, engine: AsyncEngine, *, recycle: float, keep: int = 2) -> None:
        self._engine = engine
        self._keep = keep
        self._recycle = recycle
        self._idle: list[_CheckedOut] = []

    async def take(self) -> _CheckedOut:
        while self._idle:
            held = self._idle.pop()
            if time.monotonic() - held.since < self._recycle and not held.conn.invalidated:
                return held
            await held.conn.close()
        return await _checked_out(self._engine)

    async def give_back(self, held: _CheckedOut) -> None:
        if len(self._idle) < self._keep and not held.conn.invalidated:
            self._idle.append(held)
        else:
            await held.conn.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for held in idle:
            await held.conn.close()


@asynccontextmanager
async def _connection(engine: AsyncEngine, *, timeout: float) -> AsyncIterator[AsyncConnection]:
    """A pooled connection, bounded by `timeout` seconds; invalidated if cancelled or late."""
    conn = await _checkout(engine)
    try:
        async with asyncio.timeout(timeout):
            yield conn
    except (asyncio.CancelledError, TimeoutError):
        await conn.invalidate()
        raise
    finally:
        await conn.close()


async def run_text(conn: AsyncConnection, sql: str) -> CursorResult[Any]:
    """Run SQL text with its values written in (`sql_literal`) on an engine connection."""
    # no_parameters: the driver gets no parameter tuple, so it leaves `%` in the text alone.
    return await conn.exec_driver_sql(sql, execution_options={"no_parameters": True})


def insert_sql(table: str, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]) -> str:
    """INSERT of `rows` (values in `columns` order) with the values written as literals.

    For the hot inserts (orders and outbox events, a batch at a time). SQLAlchemy's per-row
    parameter processing of an executemany was a tenth of a consumer's CPU; after that, the
    driver's own escaping (`literal()`, a type dispatch per value) cost 16-20 us per row, about
    a third of the sync path's batch work. The values are written as literals here instead
    (`sql_literal`).
    """
    values = ", ".join(["(" + ", ".join(map(sql_literal, row)) + ")" for row in rows])
    return f"{insert_head(table, columns)}{values}"


def in_list(values: Iterable[Any]) -> str:
    """`(v1, v2, ...)` as literals, for `IN`."""
    return "(" + ", ".join(map(sql_literal, values)) + ")"


@functools.lru_cache(maxsize=64)
def insert_head(table: str, columns: tuple[str, ...]) -> str:
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

    def __init__(
        self, engine: AsyncEngine, *, reads: AsyncEngine, db: DbSettings, clock: Clock = SYSTEM
    ) -> None:
        self.engine = engine
        self.reads = reads
        self.timeout = db.timeout_seconds
        self._retry_delays = db.retry_delays_seconds
        self._held = HeldConnections(engine, recycle=db.recycle_seconds)
        self._clock = clock

    @classmethod
    def connect(cls, settings: Settings) -> Database:
        engine, reads = create_engine(settings), create_engine(settings, autocommit=True)
        tracing.instrument_engines(engine.sync_engine, reads.sync_engine)
        return cls(engine, reads=reads, db=settings.db)

    async def warm_up(self, _stopping: asyncio.Event, *, connections: int) -> None:
        """Open `connections` of the read pool at start (the key claims and reads of a burst
        run there), so that a burst right after a start does not pay a TLS handshake per
        connection on its requests' path (about 6 ms each here, on the event loop: 40 at once
        took 0.28 s, past intake's key-claim budget on a busy machine). Best effort: a server
        that refuses is met again by the first request."""
        opened = await asyncio.gather(
            *(self.reads.connect() for _ in range(connections)), return_exceptions=True
        )
        for conn in opened:
            if isinstance(conn, AsyncConnection):
                await conn.close()  # back into the pool, open
        failed = [str(c) for c in opened if not isinstance(c, AsyncConnection)]
        if failed:
            log.info(
                "warmed %d of %d connections: %s", connections - len(failed), connections, failed[0]
            )

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A unit of work: commits if the block finishes, rolls back otherwise."""
        return unit_of_work(self.engine, timeout=self.timeout)

    async def transact(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`work` in a unit of work, run again (at most three more times, on a fresh connection)
        when the first try is known not to have committed.

        Known not committed: the connection was gone before the COMMIT was sent (the server
        rolls back a transaction whose connection it lost, or never knew, after a restart or a
        fail-over), a deadlock, or on Galera a certification conflict (1213) or a node not ready
        (1047). A connection lost during the COMMIT, or error 1180 in it, leaves the outcome
        unknown and is never retried. Every unit of work here is idempotent by design anyway
        (orders are stored by their intake id, skipped if present), so a retry cannot double.
        """

        async def attempt(done: Callable[[], None]) -> T:
            async with self.transaction() as conn:
                result = await work(conn)
                done()
            return result

        return await self._retrying(attempt)

    async def transact_statements(self, work: Callable[[Statements], Awaitable[T]]) -> T:
        """`work` as SQL text on the driver's connection, retried as `transact` retries.

        For the order batches, the hottest transactions: SQLAlchemy's execution path cost about
        90 us of CPU per statement over the driver's 45, and its unit of work another 180, so a
        batch of one order took 1.3 ms of CPU. Here the statements of a batch go to the server
        in two round trips (its reads; its writes with the COMMIT). `work` must end with a
        `Statements.run(..., commit=True)`; anything else rolls back.
        """

        async def attempt(done: Callable[[], None]) -> T:
            async with statements_unit(
                self.engine, timeout=self.timeout, on_commit=done, held=self._held
            ) as sql:
                return await work(sql)

        # (statements on the driver's connection pass no SQLAlchemy events: a span by hand.)
        with tracing.span("transaction", kind=SpanKind.CLIENT, attributes=tracing.DB_SYSTEM):
            return await self._retrying(attempt)

    async def _retrying(self, attempt: Callable[[Callable[[], None]], Awaitable[T]]) -> T:
        committing = False  # whether the try under way has sent its COMMIT
        failed: list[BaseException] = []

        def done() -> None:
            nonlocal committing
            committing = True

        def not_committed(exc: BaseException) -> bool:
            return isinstance(exc, DBAPIError) and may_run_again(exc, committing=committing)

        async def again() -> T:
            nonlocal committing
            if failed:  # the first try's failure, as tenacity's first attempt
                raise failed.pop()
            committing = False
            return await attempt(done)

        # The first try goes without tenacity, whose loop costs about 20 us a call: the order
        # batches come here a thousand times a second and nearly always succeed at once.
        try:
            return await attempt(done)
        except DBAPIError as exc:
            if not not_committed(exc):
                raise
            failed.append(exc)
        return await tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(len(self._retry_delays) + 1),
            wait=tenacity.wait_chain(*map(tenacity.wait_fixed, self._retry_delays)),
            retry=tenacity.retry_if_exception(not_committed),
            sleep=self._clock.sleep,
            before_sleep=_log_run_again,
            reraise=True,
        )(again)

    def read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for one consistent read statement (autocommit: no COMMIT round trip)."""
        return _connection(self.reads, timeout=self.timeout)

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query within the timeout.

        A pooled connection that a restarted server dropped fails once, and that failure empties
        the pool: the ping then asks again on a fresh connection, so a worker that had no request
        since the restart does not report the database down (each worker has its own pool).
        """

        async def select_1() -> None:
            async with self.read() as conn:
                await conn.execute(text("SELECT 1"))

        retry = tenacity.retry_if_exception(lambda e: getattr(e, "connection_invalidated", False))
        stop = tenacity.stop_after_attempt(2)
        await tenacity.AsyncRetrying(stop=stop, retry=retry, reraise=True)(select_1)

    async def dispose(self) -> None:
        await self._held.close()
        await self.engine.dispose()
        await self.reads.dispose()


def _log_run_again(state: tenacity.RetryCallState) -> None:
    exc = failure(state)
    reason = (exc and error_code(exc)) or type(getattr(exc, "orig", exc)).__name__
    log.warning(
        "unit of work failed (%s, attempt %d); running it again", reason, state.attempt_number
    )


def _connection_gone(exc: BaseException) -> bool:
    """Whether a driver error leaves its connection unusable (lost, or a node out of the
    cluster, which answers 1047 to everything: see `create_engine`)."""
    return isinstance(exc, asyncmy_errors.InterfaceError) or error_code(exc) in _GONE


class Statements:
    """SQL text of one transaction on a driver connection, several statements a round trip.

    asyncmy connects with CLIENT_MULTI_STATEMENTS: `run` sends its statements as one query
    and reads one result per statement. The server stops at the first that fails, and that
    failure is raised here; the caller then rolls back.
    """

    def __init__(self, driver: Any, *, on_commit: Callable[[], None]) -> None:
        self._driver = driver
        self._cursor = driver.cursor()
        self._on_commit = on_commit
        self.last = ""  # the text of the last query sent, for errors
        self.ended = False

    async def run(self, statements: Sequence[str], *, commit: bool = False) -> list[list[Any]]:
        """The rows of each statement (an empty list for a write), in order; with `commit`,
        the transaction ends with them."""
        if commit:
            statements = [*statements, "COMMIT"]
            # From here a lost connection leaves the outcome unknown (see Database.transact).
            self._on_commit()
        self.last = ";\n".join(statements)
        cursor = self._cursor
        await cursor.execute(self.last)
        results = [list(await cursor.fetchall())]
        while await cursor.nextset():
            results.append(list(await cursor.fetchall()))
        if commit:
            self.ended = True
            results.pop()
        return results

    async def rollback(self) -> bool:
        """End the transaction if it is still open; False if the connection failed doing so."""
        if self.ended:
            return True
        try:
            await self._driver.rollback()
        except Exception:
            return False
        self.ended = True
        return True
