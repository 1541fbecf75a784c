"""Creates the database if it is missing, runs Alembic migrations to head, then grants each
service's role its rights on the tables.

All of it runs as the migration account (DB_MIGRATE_USER), which owns the schema; each service
logs in with an account of its own that holds its role (the layout's set-up makes the roles and
the accounts). A table grant needs the table, so the grants follow every migration."""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path

import asyncmy
import asyncmy.errors
from alembic import command
from alembic.config import Config

from shop.settings import Settings

log = logging.getLogger(__name__)


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
            autocommit=autocommit,
            **settings.db.connect_args(),
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
        await conn.ensure_closed()  # QUIT, and the TLS stream shut before the loop ends


def migrate(settings: Settings) -> None:
    """Bring the configured database to the newest schema."""
    asyncio.run(_create_database(settings))
    config = Config(str(_alembic_ini()))
    config.attributes["db"] = settings.db
    with warnings.catch_warnings():
        # MariaDB notes that it ignores the name Alembic gives its version table's primary key.
        warnings.filterwarnings("ignore", message=".*alembic_version_pkc.*")
        command.upgrade(config, "head")
    asyncio.run(_grant_rights(settings))


# Each service's rights, by role and table. The product service owns the catalogue. The order
# service owns the orders; of the catalogue it reads the products and changes only their stock
# and version (a column grant: the inventory's one UPDATE sets just these two; a stored
# procedure would hide that statement behind a second language and give no narrower right),
# and adds the stock events to the product service's outbox, which it may not read or change.
ROWS = "SELECT, INSERT, UPDATE, DELETE"
RIGHTS: dict[str, dict[str, str]] = {
    "shop_products_rights": {"products": ROWS, "product_outbox": ROWS, "product_idempotency": ROWS},
    "shop_orders_rights": {
        "orders": ROWS,
        "order_keys": ROWS,
        "order_aliases": ROWS,
        "order_outbox": ROWS,
        "products": "SELECT, UPDATE (stock, version)",
        "product_outbox": "INSERT",
    },
}


# A GRANT to a role the server does not have (MariaDB's 1133, MySQL's 1410 or 3523), or by a
# migration account without the grant option (1044, 1142): a layout that has not moved to a
# role per service yet (its services share one account with rights it was given directly).
CANNOT_GRANT = frozenset({1133, 1410, 3523, 1044, 1142})


def grant_statements(database: str, role: str) -> list[str]:
    """The GRANTs that give `role` its rights on `database`'s tables."""
    return [
        f"GRANT {rights} ON `{database}`.`{table}` TO {role}"
        for table, rights in RIGHTS[role].items()
    ]


async def _grant_rights(settings: Settings) -> None:
    conn = await connect_as_migrator(settings, settings.db.name, autocommit=True)
    try:
        async with conn.cursor() as cur:
            for role in RIGHTS:
                try:
                    for statement in grant_statements(settings.db.name, role):  # name validated
                        await cur.execute(statement)
                except asyncmy.errors.Error as exc:
                    if not exc.args or exc.args[0] not in CANNOT_GRANT:
                        raise
                    log.warning(
                        "cannot grant role %s its tables (error %s): this server's set-up has "
                        "not made the services' roles or given the migration account the grant "
                        "option, so the services' accounts keep only the rights it gave them",
                        role,
                        exc.args[0],
                    )
    finally:
        await conn.ensure_closed()  # QUIT, and the TLS stream shut before the loop ends
