"""Least privilege on the real servers: the services' database account reads and writes rows
and nothing else; their RabbitMQ user is no administrator. Both as the local stack provisions
them, and as the compose file's set-up scripts (deploy/) make them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import asyncmy
import httpx
import pytest
from asyncmy.errors import OperationalError, ProgrammingError

from devstack import identities, mariadb
from devstack.settings import StackSettings
from tests.conftest import RUN

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Quotes, a backslash and SQL in the secret: the set-up scripts must pass them through intact.
AWKWARD_PASSWORD = "p'w\\d\"; DROP DATABASE x; -- $HOME"
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


@pytest.fixture
async def compose_account(
    settings: StackSettings, database: object, tmp_path: Path
) -> AsyncIterator[str]:
    """The account deploy/mysql/initdb makes in the MySQL container, made here by the same
    script (its SQL run as root on our server), for this run's database."""
    user = f"test_{RUN}_svc"
    recorded = tmp_path / "initdb.sql"
    stand_in = tmp_path / "mysql"  # records what the script would have the client run
    stand_in.write_text(f"#!/bin/sh\ncat > {recorded}\n")
    stand_in.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "MYSQL_ROOT_PASSWORD": "unused",
        "MYSQL_DATABASE": settings.db.name,
        "SHOP_DB_USER": user,
        "SHOP_DB_PASSWORD": AWKWARD_PASSWORD,
    }
    script = REPO / "deploy/mysql/initdb/10-service-account.sh"
    subprocess.run([str(script)], env=env, check=True, timeout=30)
    await asyncio.to_thread(mariadb._client, recorded.read_text())
    yield user
    await asyncio.to_thread(mariadb._client, f"DROP USER IF EXISTS '{user}'@'%';")


async def test_the_compose_init_script_makes_a_rows_only_account(
    settings: StackSettings, compose_account: str
) -> None:
    conn = await _connect(settings, compose_account, AWKWARD_PASSWORD)
    try:
        await _rows_only(conn, settings.db.name)
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


def _is_plain_user(settings: StackSettings, user: str, password: str) -> None:
    """Not an administrator; all rights on the vhost "/"."""
    _no_administrator(settings, user, password)
    with _management(settings) as api:
        rights = api.get(f"/permissions/%2F/{user}").json()
        assert [rights[kind] for kind in ("configure", "write", "read")] == [".*"] * 3


def test_the_services_rabbitmq_users_are_not_administrators(settings: StackSettings) -> None:
    rabbit = settings.rabbitmq
    assert rabbit.consumer_user is not None
    assert rabbit.consumer_password is not None
    _no_administrator(settings, rabbit.user, rabbit.password)
    _no_administrator(settings, rabbit.consumer_user, rabbit.consumer_password)


@pytest.fixture
def compose_rabbitmq_user(settings: StackSettings) -> Iterator[str]:
    user = f"test-{RUN}-app"
    yield user
    with _management(settings) as api:
        api.delete(f"/users/{user}")


async def test_the_compose_user_script_makes_a_plain_user(
    settings: StackSettings, compose_rabbitmq_user: str
) -> None:
    env = {
        "RABBITMQ_HOST": settings.rabbitmq.host,
        "RABBITMQ_MANAGEMENT_PORT": str(settings.stack.management_port),
        "RABBITMQ_ADMIN_USER": settings.stack.admin_user,
        "RABBITMQ_ADMIN_PASSWORD": settings.stack.admin_password,
        "RABBITMQ_USER": compose_rabbitmq_user,
        "RABBITMQ_PASSWORD": AWKWARD_PASSWORD,
    }
    for _ in range(2):  # idempotent: a second run changes nothing and succeeds
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(REPO / "deploy/rabbitmq/app_user.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    await asyncio.to_thread(_is_plain_user, settings, compose_rabbitmq_user, AWKWARD_PASSWORD)
    # ... and it may do what the services do: publish and consume on its vhost (over TLS,
    # which the stack's node alone speaks).
    on_default_vhost = settings.rabbitmq.model_copy(update={"vhost": "/"})
    connection = await aio_pika.connect(
        on_default_vhost.url_for(compose_rabbitmq_user, AWKWARD_PASSWORD), timeout=10
    )
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"test-{RUN}-least-privilege", auto_delete=True)
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
        got = await queue.get(timeout=5, fail=False)
        assert got is not None
        assert got.body == b"x"
        await got.ack()
        await queue.delete(if_unused=False, if_empty=False)
