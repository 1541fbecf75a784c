"""`Database.transact` runs a unit of work again when its connection was gone before the COMMIT
(a restarted server, a killed connection), and only then."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from shop.settings import Settings
from shop.storage.database import Database, Statements
from shop.storage.migrations import ROWS

pytestmark = pytest.mark.integration


@pytest.fixture
async def scratch(database: AsyncEngine) -> AsyncIterator[str]:
    name = f"test_transact_{uuid.uuid4().hex[:8]}"
    async with database.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {name} (id INT PRIMARY KEY)"))
        # The services' engine below logs in as the order service, whose role has rights on
        # the tables `shop migrate` granted it: this one too.
        await conn.execute(text(f"GRANT {ROWS} ON {name} TO shop_orders_rights"))
    yield name
    async with database.begin() as conn:
        await conn.execute(text(f"DROP TABLE {name}"))


@pytest.fixture
async def db(database: AsyncEngine, settings: Settings) -> AsyncIterator[Database]:
    db = Database.connect(settings)
    yield db
    await db.dispose()


async def _pooled_connection_id(db: Database) -> int:
    async def connection_id(conn: AsyncConnection) -> int:
        return int((await conn.execute(text("SELECT CONNECTION_ID()"))).scalar_one())

    return await db.transact(connection_id)


async def _held_connection_id(db: Database) -> int:
    async def connection_id(sql: Statements) -> int:
        (rows,) = await sql.run(["SELECT CONNECTION_ID()"], commit=True)
        return int(rows[0][0])

    return await db.transact_statements(connection_id)


async def _kill(settings: Settings, connection_id: int) -> None:
    """As a server restart would, from the outside: from a connection of the same account (one
    may kill one's own connections without any privilege)."""
    outside = create_async_engine(
        settings.db.url, poolclass=NullPool, connect_args=settings.db.connect_args()
    )
    async with outside.connect() as conn:
        await conn.execute(text(f"KILL CONNECTION {connection_id}"))
    await outside.dispose()


@pytest.mark.parametrize("path", ["engine", "statements"])
async def test_a_connection_lost_before_commit_is_replaced_and_the_work_done_once(
    path: str, db: Database, database: AsyncEngine, settings: Settings, scratch: str
) -> None:
    """Through the engine (`transact`) and as SQL text on a held connection (the batches')."""
    connection_id = _pooled_connection_id if path == "engine" else _held_connection_id
    before = await connection_id(db)
    await _kill(settings, before)
    attempts = 0

    async def on_engine(conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(text(f"INSERT INTO {scratch} (id) VALUES (1)"))

    async def as_text(sql: Statements) -> None:
        nonlocal attempts
        attempts += 1
        await sql.run([f"SELECT id FROM {scratch} FOR UPDATE"])
        await sql.run([f"INSERT INTO {scratch} (id) VALUES (1)"], commit=True)

    await (db.transact(on_engine) if path == "engine" else db.transact_statements(as_text))
    assert attempts == 2, "the first attempt should have met the dead connection"
    async with database.connect() as conn:
        assert (await conn.execute(text(f"SELECT COUNT(*) FROM {scratch}"))).scalar_one() == 1
    assert await connection_id(db) != before


async def test_a_refused_statement_is_not_tried_again(db: Database, scratch: str) -> None:
    attempts = 0

    async def insert_twice(conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(text(f"INSERT INTO {scratch} (id) VALUES (1), (1)"))

    with pytest.raises(IntegrityError):
        await db.transact(insert_twice)
    assert attempts == 1


async def test_batches_keep_their_connection_between_units(db: Database) -> None:
    assert await _held_connection_id(db) == await _held_connection_id(db)


async def test_a_statement_refused_in_a_packet_undoes_the_packet_and_is_not_retried(
    db: Database, database: AsyncEngine, scratch: str
) -> None:
    attempts = 0

    async def insert(sql: Statements) -> None:
        nonlocal attempts
        attempts += 1
        await sql.run(
            [
                f"INSERT INTO {scratch} (id) VALUES (2)",
                f"INSERT INTO {scratch} (id) VALUES (1), (1)",
            ],
            commit=True,
        )

    with pytest.raises(IntegrityError):
        await db.transact_statements(insert)
    assert attempts == 1
    async with database.connect() as conn:
        assert (await conn.execute(text(f"SELECT COUNT(*) FROM {scratch}"))).scalar_one() == 0
    # The connection was rolled back, kept, and serves the next unit.
    await _held_connection_id(db)


async def test_a_connection_lost_in_a_batch_renews_the_pool_for_every_unit(
    db: Database, settings: Settings, scratch: str
) -> None:
    """As SQLAlchemy does on a disconnect: after a restart, one dead connection met by a batch
    (or a relay round) means every pooled one is dead, so none is handed out again (a
    service's plain reads and writes are not retried: they would answer 503)."""
    held = await _held_connection_id(db)  # kept out of the pool by the batches

    async def connection_id(conn: AsyncConnection) -> int:
        await asyncio.sleep(0.05)  # so that the five are checked out together
        return int((await conn.execute(text("SELECT CONNECTION_ID()"))).scalar_one())

    pooled = await asyncio.gather(*(db.transact(connection_id) for _ in range(5)))
    assert len({held, *pooled}) == 6
    for dead in (held, *pooled):  # as a restarted server leaves them
        await _kill(settings, dead)

    async def read_then_write(sql: Statements) -> None:  # a batch: its reads, then the COMMIT
        await sql.run([f"SELECT id FROM {scratch} FOR UPDATE"])
        await sql.run([], commit=True)

    await db.transact_statements(read_then_write)  # meets the dead held connection, then a new
    attempts = 0

    async def insert(conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(text(f"INSERT INTO {scratch} (id) VALUES (1)"))

    await db.transact(insert)
    assert attempts == 1, "a dead pooled connection was handed out after a batch met one"


async def test_a_checkout_that_waits_for_a_connection_is_counted_by_its_pool(
    settings: Settings,
) -> None:
    """`db_pool_waits_total{pool}` and `db_pool_wait_seconds_total{pool}` (the alert
    ShopDatabasePoolSaturated): a transaction that waits for a full pool counts once, with its
    wait; checkouts of a free pooled connection do not count."""
    one = settings.model_copy(update={"db": settings.db.model_copy(update={"pool_size": 1})})
    db = Database.connect(one)  # pool 1, overflow 1: two connections at most

    def counted() -> tuple[float, float]:
        labels = {"pool": "transactions"}
        return (
            REGISTRY.get_sample_value("db_pool_waits_total", labels) or 0.0,
            REGISTRY.get_sample_value("db_pool_wait_seconds_total", labels) or 0.0,
        )

    async def select_one(conn: AsyncConnection) -> int:
        return int((await conn.execute(text("SELECT 1"))).scalar_one())

    try:
        await db.transact(select_one)  # the pool's first connection, opened and pooled
        before = counted()
        for _ in range(20):  # a free pooled connection: no wait
            await db.transact(select_one)
        assert counted() == before
        holding, release = asyncio.Event(), asyncio.Event()

        held: list[AsyncConnection] = []

        async def hold(conn: AsyncConnection) -> int:
            held.append(conn)
            if len(held) == 2:
                holding.set()
            await release.wait()
            return 1

        # Both connections held; a third transaction waits for one of them, 0.3 s.
        holders = [asyncio.create_task(db.transact(hold)) for _ in range(2)]
        await asyncio.wait_for(holding.wait(), 5)
        waiter = asyncio.create_task(db.transact(select_one))
        await asyncio.sleep(0.3)
        release.set()
        assert await waiter == 1
        await asyncio.gather(*holders)
        waits, seconds = counted()
        assert waits >= before[0] + 1  # the waiter (and the second holder's new connection)
        assert seconds - before[1] >= 0.25
    finally:
        await db.dispose()
