"""Session fixtures: a private database, topics and queue on the real servers, and the services.

Everything the tests create is named for this run (database `shop_test_<run>`, topics and queue
`test-<run>-...`, RabbitMQ vhost `test-<run>`, free service ports), so a system started with
`make run` is not touched; the database, topics and vhost are removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncmy
import httpx
import pytest
from confluent_kafka.admin import AdminClient
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devstack import identities, rabbitmq
from devstack import kafka as stack_kafka
from devstack.settings import StackSettings, load_stack_settings
from shop.messaging.kafka import client_config
from tests.support import ServiceProcess, free_port
from tests.tokens import AUDIENCE, ISSUER, Issuer

RUN = uuid.uuid4().hex[:8]
# The servers as `make up` configured them (not this run's database and queue names): tests that
# stop and start a server pass these to devstack, whose provisioning then grants the accounts
# their rights on every `shop…` database again, not on this run's alone.
STACK = load_stack_settings()
# The run's token issuer: the services trust its public key (and only it).
TOKENS = Issuer()
_KEYS = Path(tempfile.mkdtemp(prefix=f"shop-test-{RUN}-keys-"))
_SIGNING_KEY, _PUBLIC_KEY = TOKENS.write(_KEYS)
# Tokens of the suite's default clients: an operator who may write products and act on every
# order (tests of who may do what use their own tokens).
OPERATOR_SUBJECT = "test-operator"
OPERATOR = TOKENS.bearer(OPERATOR_SUBJECT, ["products:write", "orders:admin"], ttl=24 * 3600)
TEST_ENV = {
    "AUTH_ISSUER": ISSUER,
    "AUTH_AUDIENCE": AUDIENCE,
    "AUTH_PUBLIC_KEY_FILE": str(_PUBLIC_KEY),
    "AUTH_SIGNING_KEY_FILE": str(_SIGNING_KEY),
    "AUTH_ADMIN_CLAIM": "realm_access.roles",  # as Keycloak puts realm roles (AUTH_ADMIN_ROLE)
    "DB_NAME": f"shop_test_{RUN}",
    "KAFKA_TOPIC": f"test-{RUN}-orders",
    "KAFKA_PRODUCT_EVENTS_TOPIC": f"test-{RUN}-product-events",
    "KAFKA_ORDER_EVENTS_TOPIC": f"test-{RUN}-order-events",
    "KAFKA_DLQ_TOPIC": f"test-{RUN}-orders.dlq",
    "KAFKA_CONSUMER_GROUP": f"test-{RUN}-order-service",
    "RABBITMQ_QUEUE": f"test-{RUN}-orders",
    # The run's own vhost: the services' RabbitMQ accounts get their permissions for this
    # run's names there (one set per user and vhost), beside those `make up` gave them on "/".
    "RABBITMQ_VHOST": f"test-{RUN}",
    "PRODUCT_SERVICE_PORT": str(free_port()),
    "ORDER_SERVICE_PORT": str(free_port()),
    "OUTBOX_POLL_SECONDS": "0.1",
    "REQUEST_BODY_SECONDS": "2",  # short, so that test_server_limits waits little
    # REQUEST_HEADER_SECONDS stays 10 s: a fresh connection's deadline runs from its accept,
    # and a burst of 400 new connections on a busy machine delayed reads past 2 s.
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that stop a server run last, so an outage never overlaps another test; the cluster's
    fault test after them, as it loads the whole machine."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("cluster") is not None,
            item.get_closest_marker("disruptive") is not None,
        )
    )


@pytest.fixture(scope="session")
def settings() -> StackSettings:
    """The run's settings, with the order service's accounts (and the tools')."""
    return load_stack_settings(**{key.lower(): value for key, value in TEST_ENV.items()})


@pytest.fixture(scope="session")
def product_settings(settings: StackSettings) -> StackSettings:
    """The run's settings with the product service's accounts."""
    return settings.replace(**identities.settings("products"))


async def _drop_database(settings: StackSettings, name: str) -> None:
    conn = await asyncmy.connect(
        host=settings.db.host,
        port=settings.db.port,
        user=settings.db.migrate_user,
        password=settings.db.migrate_password,
        **settings.db.connect_args(),
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        await conn.ensure_closed()  # QUIT, and the TLS stream shut before the loop ends


def migrate(env: dict[str, str]) -> None:
    """Run `shop migrate` as a user would, against the database named in `env`."""
    result = subprocess.run(
        [sys.executable, "-m", "shop", "migrate"],
        env={**os.environ, **identities.service_env("orders"), **identities.tools_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"shop migrate failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
async def database(settings: StackSettings) -> AsyncIterator[AsyncEngine]:
    """A fresh, migrated database of this run; dropped after the run."""
    try:
        await asyncio.wait_for(_drop_database(settings, settings.db.name), 10)
    except (OSError, TimeoutError) as exc:
        pytest.exit(f"MariaDB is not reachable ({exc}); `make up` or `devstack up` first", 2)
    await asyncio.to_thread(migrate, TEST_ENV)
    # The suite's own engine keeps SQLAlchemy's defaults (rollback on return): tests read
    # without ending transactions. It is the migration account's, as tests make scratch tables;
    # the services run as theirs, which may only read and write rows.
    engine = create_async_engine(
        settings.db.migration_url,
        isolation_level="READ COMMITTED",
        connect_args=settings.db.connect_args(),
    )
    yield engine
    await engine.dispose()
    await _drop_database(settings, settings.db.name)


@pytest.fixture(scope="session")
def kafka_topics(settings: StackSettings) -> Iterator[None]:
    """The services' principals may use the run's topics and group (`devstack.kafka.provision`:
    ACLs on these names); at the end the run's ACLs and topics (the session's and any a test
    made under the `test-<run>-` prefix) are deleted (the services create the topics)."""
    stack_kafka.provision(settings)
    yield
    stack_kafka.revoke(settings, f"test-{RUN}-")
    admin = AdminClient(client_config(stack_kafka.as_admin(settings)))
    names = {v for k, v in TEST_ENV.items() if k.startswith("KAFKA_") and "TOPIC" in k}
    existing = admin.list_topics(timeout=10).topics
    doomed = [name for name in existing if name in names or name.startswith(f"test-{RUN}-")]
    if doomed:
        for fut in admin.delete_topics(doomed, operation_timeout=10).values():
            fut.result(timeout=15)


@asynccontextmanager
async def _running(
    name: str, port_var: str, logs: pytest.TempPathFactory
) -> AsyncIterator[ServiceProcess]:
    log = Path(logs.mktemp("logs")) / f"{name}.log"
    service = ServiceProcess(name, port=int(TEST_ENV[port_var]), env=TEST_ENV, log_path=log)
    await service.start()
    yield service
    assert service.stop(), f"{name} service did not stop cleanly; see {log}"


@pytest.fixture(scope="session")
async def product_service(
    database: AsyncEngine, kafka_topics: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServiceProcess]:
    async with _running("products", "PRODUCT_SERVICE_PORT", tmp_path_factory) as service:
        yield service


@pytest.fixture(scope="session")
async def order_service(
    database: AsyncEngine,
    kafka_topics: None,
    rabbitmq_cleanup: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ServiceProcess]:
    async with _running("orders", "ORDER_SERVICE_PORT", tmp_path_factory) as service:
        yield service


@pytest.fixture
async def products(product_service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=product_service.url, timeout=15, headers=OPERATOR
    ) as client:
        yield client


@pytest.fixture
async def orders(order_service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=order_service.url, timeout=15, headers=OPERATOR
    ) as client:
        yield client


@pytest.fixture(scope="session")
def rabbitmq_cleanup(settings: StackSettings) -> Iterator[None]:
    """The run's vhost, provisioned for its names as `make up` provisions "/" (accounts,
    permissions, the order topology); deleted at the end with everything in it, and so are
    the vhosts of single tests (`test-<run>-...`)."""
    rabbitmq.provision(settings)
    yield
    api = f"http://127.0.0.1:{settings.stack.management_port}/api"
    auth = (settings.stack.admin_user, settings.stack.admin_password)
    with httpx.Client(auth=auth, timeout=10) as client:
        listed = client.get(f"{api}/vhosts")
        left = [v["name"] for v in listed.json()] if listed.status_code == 200 else []
    for vhost in left:
        if vhost.startswith(f"test-{RUN}-"):
            rabbitmq.remove_vhost(settings.replace(rabbitmq_vhost=vhost))
    rabbitmq.remove_vhost(settings)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_KEYS, ignore_errors=True)
