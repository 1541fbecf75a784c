"""Creates the database if it is missing, then runs Alembic migrations to head.

Both run as the migration account (DB_MIGRATE_USER): the services' account may only read and
write rows."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import asyncmy
from alembic import command
from alembic.config import Config

from shop.settings import Settings


def _alembic_ini() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "alembic.ini"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("alembic.ini not found in the working directory or the checkout")


async def connect_as_migrator(
    settings: Settings, database: str | None = None, *, autocommit: bool = False
) -> asyncmy.Connection:
    """A driver connection as the migration account, which may create and drop databases."""
    return await asyncio.wait_for(
        asyncmy.connect(
            host=settings.db.host,
            port=settings.db.port,
            user=settings.db.migrate_user,
            password=settings.db.migrate_password,
            database=database,
            connect_timeout=int(settings.db.timeout_seconds),
            autocommit=autocommit,
        ),
        timeout=settings.db.timeout_seconds * 2,
    )


async def _create_database(settings: Settings) -> None:
    conn = await connect_as_migrator(settings)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                (settings.db.name,),
            )
            if await cur.fetchone() is None:
                await cur.execute(
                    f"CREATE DATABASE `{settings.db.name}` "  # the name is validated
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
    finally:
        conn.close()


def migrate(settings: Settings) -> None:
    """Bring the configured database to the newest schema."""
    asyncio.run(_create_database(settings))
    config = Config(str(_alembic_ini()))
    config.attributes["db_url"] = settings.db.migration_url
    with warnings.catch_warnings():
        # MariaDB notes that it ignores the name Alembic gives its version table's primary key.
        warnings.filterwarnings("ignore", message=".*alembic_version_pkc.*")
        command.upgrade(config, "head")
