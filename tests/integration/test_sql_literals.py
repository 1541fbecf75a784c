"""`insert_sql` writes values as SQL literals: whatever they hold, MariaDB stores them exactly.

Generated strings (quotes, backslashes, NUL, percent signs, any Unicode), bytes, integers at
the column limits, decimals, naive timestamps and NULLs are inserted and read back through
bound parameters; every row must come back as it went in, and nothing else may be changed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shop.settings import Settings
from shop.storage.database import create_engine, insert_sql, sql_literal, statements_unit

pytestmark = pytest.mark.integration

TABLE = "literal_check"
COLUMNS = ("id", "b", "s", "n", "d", "ts", "maybe")

texts = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300
) | st.sampled_from(["'", "\\", "\\'", "%s", "%(x)s", "%%", "\x00", "\x1a", "\r\n", "');--"])
rows = st.lists(
    st.tuples(
        st.binary(min_size=16, max_size=16),
        texts,
        st.integers(-(2**63), 2**63 - 1),
        st.decimals(
            min_value=Decimal("-999999999999.99"),
            max_value=Decimal("999999999999.99"),
            places=2,
            allow_nan=False,
            allow_infinity=False,
        ),
        st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2037, 12, 31)),
        st.none() | texts,
    ),
    min_size=1,
    max_size=20,
)


@pytest.fixture(scope="module")
def engine(
    settings: Settings, database: AsyncEngine
) -> Iterator[tuple[asyncio.AbstractEventLoop, AsyncEngine]]:
    loop = asyncio.new_event_loop()
    # The services' engine, as the migration account: the scratch table is created and dropped.
    engine = create_engine(settings.migration_account())

    async def create() -> None:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
            await conn.execute(
                text(
                    f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, b BINARY(16) NOT NULL, "
                    "s VARCHAR(400) NOT NULL, n BIGINT NOT NULL, d DECIMAL(14, 2) NOT NULL, "
                    "ts DATETIME(6) NOT NULL, maybe TEXT NULL) CHARACTER SET utf8mb4"
                )
            )

    loop.run_until_complete(create())
    yield loop, engine

    async def drop() -> None:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {TABLE}"))
        await engine.dispose()

    loop.run_until_complete(drop())
    loop.close()


async def _round_trip(engine: AsyncEngine, values: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    numbered = [(i, *row) for i, row in enumerate(values)]
    # The way the order batches write: SQL text on the driver's connection (db.Statements).
    async with statements_unit(engine, timeout=30.0) as sql:
        await sql.run([f"DELETE FROM {TABLE}", insert_sql(TABLE, COLUMNS, numbered)], commit=True)
    async with engine.connect() as conn:
        found = await conn.execute(text(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} ORDER BY id"))
        return [tuple(row)[1:] for row in found]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=rows)
def test_every_value_comes_back_as_it_went_in(
    engine: tuple[asyncio.AbstractEventLoop, AsyncEngine], values: list[tuple[Any, ...]]
) -> None:
    loop, db = engine
    found = loop.run_until_complete(_round_trip(db, values))
    for i, (got, sent) in enumerate(zip(found, values, strict=True)):
        assert got == sent, (i, [(g, s) for g, s in zip(got, sent, strict=True) if g != s])


def test_values_without_a_literal_are_refused() -> None:
    for value in (1.5, dt.datetime.now(dt.UTC), dt.date(2026, 1, 1), [1]):
        with pytest.raises(TypeError):
            sql_literal(value)
