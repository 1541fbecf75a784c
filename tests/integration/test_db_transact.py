"""`Database.transact` runs a unit of work again when its connection was gone before the COMMIT
(a restarted server, a killed connection), and only then."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from shop.db import Database, Statements
from shop.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def scratch(database: AsyncEngine) -> AsyncIterator[str]:
    name = f"test_transact_{uuid.uuid4().hex[:8]}"
    async with database.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {name} (id INT PRIMARY KEY)"))
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


async def test_a_connection_lost_before_commit_is_replaced_and_the_work_done_once(
    db: Database, database: AsyncEngine, settings: Settings, scratch: str
) -> None:
    pooled = await _pooled_connection_id(db)
    # As a server restart would, from the outside: from a connection of the same account (one
    # may kill one's own connections without any privilege).
    outside = create_async_engine(settings.db_url, poolclass=NullPool)
    async with outside.connect() as conn:
        await conn.execute(text(f"KILL CONNECTION {pooled}"))
    await outside.dispose()
    attempts = 0

    async def insert(conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(text(f"INSERT INTO {scratch} (id) VALUES (1)"))

    await db.transact(insert)
    assert attempts == 2, "the first attempt should have met the dead pooled connection"
    async with database.connect() as conn:
        assert (await conn.execute(text(f"SELECT COUNT(*) FROM {scratch}"))).scalar_one() == 1
    assert await _pooled_connection_id(db) != pooled


async def test_a_refused_statement_is_not_tried_again(db: Database, scratch: str) -> None:
    attempts = 0

    async def insert_twice(conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(text(f"INSERT INTO {scratch} (id) VALUES (1), (1)"))

    with pytest.raises(IntegrityError):
        await db.transact(insert_twice)
    assert attempts == 1


# The order batches' path: SQL text on a held driver connection (Database.transact_statements).


async def _held_connection_id(db: Database) -> int:
    async def connection_id(sql: Statements) -> int:
        (rows,) = await sql.run(["SELECT CONNECTION_ID()"], commit=True)
        return int(rows[0][0])

    return await db.transact_statements(connection_id)


async def test_batches_keep_their_connection_between_units(db: Database) -> None:
    assert await _held_connection_id(db) == await _held_connection_id(db)


async def test_a_held_connection_lost_before_commit_is_replaced_and_the_work_done_once(
    db: Database, database: AsyncEngine, settings: Settings, scratch: str
) -> None:
    held = await _held_connection_id(db)
    outside = create_async_engine(settings.db_url, poolclass=NullPool)
    async with outside.connect() as conn:
        await conn.execute(text(f"KILL CONNECTION {held}"))
    await outside.dispose()
    attempts = 0

    async def insert(sql: Statements) -> None:
        nonlocal attempts
        attempts += 1
        await sql.run([f"SELECT id FROM {scratch} FOR UPDATE"])
        await sql.run([f"INSERT INTO {scratch} (id) VALUES (1)"], commit=True)

    await db.transact_statements(insert)
    assert attempts == 2, "the first attempt should have met the dead held connection"
    async with database.connect() as conn:
        assert (await conn.execute(text(f"SELECT COUNT(*) FROM {scratch}"))).scalar_one() == 1
    assert await _held_connection_id(db) != held


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
