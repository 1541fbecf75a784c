"""Least privilege on the real servers: the services' database account reads and writes rows
and nothing else; their RabbitMQ user is no administrator. Both as the local stack provisions
them, and as the compose file's set-up scripts (deploy/) make them."""

from __future__ import annotations

import asyncio

import asyncmy
import httpx
import pytest
from asyncmy.errors import OperationalError, ProgrammingError

from devstack import identities
from devstack.settings import StackSettings

pytestmark = pytest.mark.integration

# Quotes, a backslash and SQL in the secret: the set-up scripts must pass them through intact.
DENIED = (OperationalError, ProgrammingError)  # 1142/1143/1044: command denied to user


async def _connect(
    settings: StackSettings, user: str, password: str, *, tls: bool = True
) -> asyncmy.Connection:
    return await asyncio.wait_for(
        asyncmy.connect(
            host=settings.db.host,
            port=settings.db.port,
            user=user,
            password=password,
            database=settings.db.name,
            autocommit=True,
            **(settings.db.connect_args() if tls else {"connect_timeout": 5}),
        ),
        10,
    )


async def _refused(conn: asyncmy.Connection, statement: str) -> bool:
    try:
        async with conn.cursor() as cur:
            await cur.execute(statement)
    except DENIED as refusal:
        return refusal.args[0] in (1142, 1143, 1044, 1045, 1227)
    return False


async def _rows_only(conn: asyncmy.Connection, database: str) -> None:
    """Reads and writes rows; may not change the schema or make databases."""
    async with conn.cursor() as cur:
        await cur.execute("SELECT COUNT(*) FROM products")
        assert (await cur.fetchone()) is not None
        await cur.execute("DELETE FROM products WHERE id = -1")
    for statement in (
        "CREATE TABLE least_privilege_probe (id INT)",
        "ALTER TABLE products ADD COLUMN probe INT",
        "DROP TABLE product_outbox",
        "TRUNCATE TABLE orders",
        f"CREATE DATABASE `{database}_probe`",
        "CREATE USER probe IDENTIFIED BY 'x'",
    ):
        assert await _refused(conn, statement), f"the services' account may run: {statement}"


async def _account(settings: StackSettings, service: str) -> asyncmy.Connection:
    user = f"shop_{service}"
    return await _connect(settings, user, identities.password(f"db:{user}"))


async def _may(conn: asyncmy.Connection, statement: str) -> None:
    async with conn.cursor() as cur:
        await cur.execute(statement)


# What each service's account may do, and some of what it may not, on the run's (migrated)
# database: the grants `shop migrate` gives the roles the stack made.
ALLOWED = {
    "products": (
        "SELECT id, name, price, stock, version FROM products LIMIT 1",
        "UPDATE products SET name = name, price = price WHERE id = -1",
        "DELETE FROM products WHERE id = -1",
        "SELECT COUNT(*) FROM product_outbox",
        "DELETE FROM product_outbox WHERE id = -1",
        "SELECT COUNT(*) FROM product_idempotency",
    ),
    "orders": (
        "SELECT COUNT(*) FROM orders",
        "DELETE FROM orders WHERE id = -1",
        "DELETE FROM order_keys WHERE created_at < '1970-01-02'",
        "SELECT COUNT(*) FROM order_aliases",
        "DELETE FROM order_outbox WHERE id = -1",
        "SELECT id, price, stock, version FROM products WHERE id = -1 FOR UPDATE",
        "UPDATE products SET stock = stock, version = version WHERE id = -1",
    ),
}
REFUSED = {
    "products": (
        "SELECT COUNT(*) FROM orders",
        "INSERT INTO orders (id) VALUES (-1)",
        "DELETE FROM orders WHERE id = -1",
        "UPDATE order_keys SET quantity = 0 WHERE 1 = 0",
        "SELECT COUNT(*) FROM order_outbox",
        "SELECT COUNT(*) FROM alembic_version",
    ),
    "orders": (
        "UPDATE products SET price = 0 WHERE id = -1",
        "UPDATE products SET name = 'x' WHERE id = -1",
        "INSERT INTO products (name, price, stock) VALUES ('x', 1, 1)",
        "DELETE FROM products WHERE id = -1",
        "SELECT COUNT(*) FROM product_outbox",
        "DELETE FROM product_outbox WHERE id = -1",
        "SELECT COUNT(*) FROM product_idempotency",
        "SELECT COUNT(*) FROM alembic_version",
    ),
}
SCHEMA_CHANGES = (
    "CREATE TABLE least_privilege_probe (id INT)",
    "ALTER TABLE products ADD COLUMN probe INT",
    "DROP TABLE product_outbox",
    "TRUNCATE TABLE orders",
    "CREATE USER probe IDENTIFIED BY 'x'",
)


@pytest.mark.parametrize("service", ["products", "orders"])
async def test_each_service_account_reaches_its_own_tables_only(
    settings: StackSettings, database: object, service: str
) -> None:
    conn = await _account(settings, service)
    try:
        for statement in ALLOWED[service]:
            await _may(conn, statement)
        for statement in (*REFUSED[service], *SCHEMA_CHANGES):
            assert await _refused(conn, statement), f"shop_{service} may run: {statement}"
        # ... and the order service's one write to the product service's outbox: its stock
        # events (in a transaction rolled back, so nothing is left).
        if service == "orders":
            async with conn.cursor() as cur:
                await cur.execute("BEGIN")
                await cur.execute(
                    "INSERT INTO product_outbox (event_id, event_key, payload, created_at) "
                    "VALUES ('probe', 'probe', x'00', NOW(6))"
                )
                await cur.execute("ROLLBACK")
    finally:
        conn.close()


@pytest.mark.parametrize("service", ["products", "orders"])
async def test_a_service_account_is_refused_without_tls(
    settings: StackSettings, database: object, service: str
) -> None:
    user = f"shop_{service}"
    with pytest.raises(OperationalError) as refused:
        await _connect(settings, user, identities.password(f"db:{user}"), tls=False)
    assert refused.value.args[0] == 1045  # access denied: the account REQUIRE SSL


async def test_the_services_settings_name_a_tls_database(settings: StackSettings) -> None:
    assert settings.db.ca_file, "the stack gives the services its CA: DB_CA_FILE"
    conn = await _account(settings, "orders")
    try:
        async with conn.cursor() as cur:
            await cur.execute("SHOW STATUS LIKE 'Ssl_version'")
            row = await cur.fetchone()
        assert row is not None
        assert str(row[1]).startswith("TLSv1.")
    finally:
        conn.close()


def _management(settings: StackSettings) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://{settings.rabbitmq.host}:{settings.stack.management_port}/api",
        auth=(settings.stack.admin_user, settings.stack.admin_password),
        timeout=10,
    )


def _no_administrator(settings: StackSettings, user: str, password: str) -> None:
    """No tags, so not an administrator and no management API."""
    with _management(settings) as api:
        found = api.get(f"/users/{user}")
        assert found.status_code == 200, found.text
        assert found.json()["tags"] in ([], ""), found.json()
    as_itself = httpx.get(
        f"http://{settings.rabbitmq.host}:{settings.stack.management_port}/api/overview",
        auth=(user, password),
        timeout=10,
    )
    assert as_itself.status_code == 401


def test_the_services_rabbitmq_users_are_not_administrators(settings: StackSettings) -> None:
    rabbit = settings.rabbitmq
    assert rabbit.consumer_user is not None
    assert rabbit.consumer_password is not None
    _no_administrator(settings, rabbit.user, rabbit.password)
    _no_administrator(settings, rabbit.consumer_user, rabbit.consumer_password)
