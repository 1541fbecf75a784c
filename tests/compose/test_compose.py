"""`docker compose up -d --wait` for real (`make test-compose`): the README's walk against it,
the order service SIGKILLed under load with every accepted order stored exactly once, who may do
what on the servers (each container holds only its own accounts; no account, a wrong password or
the product service's accounts cannot write order commands or orders), an order on every path
with the services' own accounts, Kafka and RabbitMQ restarted, and `down -v` leaving nothing
behind.

`make test-compose` starts an engine if none answers, builds the compose plugin and, where no
registry answers, the local images (COMPOSE_ENV_FILES names deploy/compose/local-images.env).
The test runs its own compose project on free ports published on 127.0.0.1; it talks only to
those ports and to the containers of that project.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiormq
import httpx
import pytest
from confluent_kafka import KafkaError, Producer

from shop.access import dev_issuer
from shop.messaging.kafka import producer_config
from shop.settings import Kafka
from tests.support import free_port

pytestmark = pytest.mark.compose

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
UP_TIMEOUT = 300  # seconds; a cold start takes about 20 s here, the first image build minutes
PATHS = ("sync", "kafka", "rabbitmq")


@dataclass
class Deployment:
    project: str
    env: dict[str, str]
    ports: dict[str, int]
    up_seconds: float = 0.0

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        result = subprocess.run(
            ["docker", "compose", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)}: {result.stderr[-3000:]}")
        return result.stdout

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def sql(self, query: str) -> list[list[str]]:
        """Rows of `query` on the shop database, as the migration account inside the mysql
        container, over TLS (the password never leaves the container)."""
        script = (
            'MYSQL_PWD="$(cat /run/shop-secrets/db_migrate_password)" '
            "exec mysql --host=127.0.0.1 --ssl-ca=/run/shop-secrets/ca.pem --user=shop_migrate "
            '--batch --skip-column-names "$MYSQL_DATABASE" -e "$0"'
        )
        out = self.compose("exec", "-T", "mysql", "sh", "-c", script, query)
        return [line.split("\t") for line in out.splitlines() if line]

    def python(self, service: str, code: str) -> Any:
        """What `code`, run by the app's Python in `service`'s container (its environment, its
        accounts), prints as JSON on its last line."""
        out = self.compose("exec", "-T", service, "python", "-c", code, timeout=180)
        return json.loads(out.strip().splitlines()[-1])

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in (["ps", "-a"], ["volume", "ls"], ["network", "ls"]):
            listed = subprocess.run(
                ["docker", *kind, "-q", "--filter", label],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout.split()
            found += [f"{kind[0]} {item}" for item in listed]
        return found


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        pytest.fail("no Docker engine answers: run `make test-compose` (it starts one)")
    ports = {
        name: free_port()
        for name in ("MYSQL", "KAFKA", "RABBITMQ", "RABBITMQ_MANAGEMENT", "PRODUCT", "ORDER")
    }
    project = f"shop-test-{os.getpid()}"
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        **{f"{name}_HOST_PORT": str(port) for name, port in ports.items()},
    }
    found = Deployment(project, env, {n.lower(): p for n, p in ports.items()})
    started = time.monotonic()
    try:
        found.compose(
            "up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT), timeout=UP_TIMEOUT + 60
        )
        found.up_seconds = time.monotonic() - started
        print(f"docker compose up -d --wait: healthy in {found.up_seconds:.1f} s")
        yield found
    finally:
        found.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=180, check=False)
    assert found.leftovers() == [], "docker compose down -v left these behind"


def _readme_block(after: str, before: str) -> list[str]:
    """The ```bash blocks of README.md between the headings `after` and `before`."""
    text = README.read_text()
    section = text[text.index(after) : text.index(before, text.index(after))]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def test_every_readme_example_works_against_the_deployment(deployment: Deployment) -> None:
    """The Docker section's token commands, then every example of Products, Orders and
    Operations, run by bash as written (ports moved to the test's), each curl failing on a
    non-2xx answer."""
    tokens = [b for b in _readme_block("## Run with Docker", "## Kubernetes") if "token" in b]
    assert tokens, "the README's Docker section shows no token command"
    examples = _readme_block("### Products", "## Performance")
    assert len(examples) >= 3
    script = "\n".join(["set -euo pipefail", *tokens, *examples])
    script = script.replace("127.0.0.1:8080", f"127.0.0.1:{deployment.ports['product']}")
    script = script.replace("127.0.0.1:8081", f"127.0.0.1:{deployment.ports['order']}")
    curl = 'curl() { command curl --fail-with-body --max-time 30 "$@"; }\n'
    result = subprocess.run(
        ["bash", "-c", curl + script],
        cwd=REPO,
        env=deployment.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    # The walk's sync order was confirmed, then cancelled (its units back in stock).
    assert "'status': 'confirmed'" in result.stderr
    assert '"status":"cancelled"' in result.stdout.replace(" ", "")


@dataclass
class Load:
    """Orders from many customers, each with their own token, retried as the README says:
    the same Idempotency-Key after a 503, a lost connection or a timeout."""

    client: httpx.AsyncClient
    tokens: dict[int, str]
    product: int
    accepted: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> order id
    answers: dict[str, int] = field(default_factory=dict)
    retries: int = 0

    async def order(self, user: int, path: str) -> None:
        key = str(uuid.uuid4())
        url = "/orders/sync" if path == "sync" else f"/orders/async/{path}"
        body = {"user_id": user, "product_id": self.product, "quantity": 1}
        headers = {"Authorization": f"Bearer {self.tokens[user]}", "Idempotency-Key": key}
        deadline = time.monotonic() + 120
        while True:
            try:
                response = await self.client.post(url, json=body, headers=headers)
                status = str(response.status_code)
            except httpx.TransportError:
                response, status = None, "no answer"
            self.answers[status] = self.answers.get(status, 0) + 1
            if response is not None and response.status_code in (201, 202):
                self.accepted[key] = response.json()["id"]
                return
            if response is not None and response.status_code not in (429, 503):
                raise AssertionError(f"{path}: {response.status_code} {response.text[:300]}")
            assert time.monotonic() < deadline, f"{path} order {key} never accepted"
            self.retries += 1
            await asyncio.sleep(0.5)


def _issuer_key(deployment: Deployment) -> bytes:
    """The development issuer's signing key, read from its volume by the token tool."""
    pem = deployment.compose(
        "run", "--rm", "-T", "--entrypoint", "cat", "token", "/auth/signing.pem"
    )
    return pem.encode()


def _ready(deployment: Deployment, service: str, *, timeout: float = 120) -> None:
    """Wait until `service` answers /readyz with 200 (its database and brokers answer)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{deployment.url(service)}/readyz", timeout=3).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{service} not ready within {timeout} s"
        time.sleep(0.5)


def _restart_order_service(deployment: Deployment) -> None:
    """SIGKILL, then started again as an operator's supervisor would."""
    deployment.compose("kill", "-s", "SIGKILL", "order-service")
    deployment.compose("start", "order-service")
    _ready(deployment, "order")


async def test_sigkill_of_the_order_service_under_load_loses_and_doubles_nothing(
    deployment: Deployment,
) -> None:
    signing = _issuer_key(deployment)
    tokens = {
        user: dev_issuer.issue(signing, issuer="shop-dev", audience="shop", subject=str(user))
        for user in range(1001, 1201)
    }
    catalogue = dev_issuer.issue(
        signing, issuer="shop-dev", audience="shop", subject="ops", scopes=["products:write"]
    )
    initial = 100_000
    async with httpx.AsyncClient(base_url=deployment.url("product"), timeout=10) as products:
        created = await products.post(
            "/products",
            json={"name": "load", "price": 1.25, "stock": initial},
            headers={"Authorization": f"Bearer {catalogue}"},
        )
        assert created.status_code == 201, created.text
    product = created.json()["id"]
    users = itertools.cycle(tokens)
    async with httpx.AsyncClient(base_url=deployment.url("order"), timeout=10) as client:
        load = Load(client, tokens, product)
        stop = time.monotonic() + 25

        async def customer_stream() -> None:
            while time.monotonic() < stop:
                await load.order(next(users), random.choice(PATHS))

        streams = [asyncio.create_task(customer_stream()) for _ in range(24)]
        await asyncio.sleep(8)
        await asyncio.to_thread(_restart_order_service, deployment)
        await asyncio.gather(*streams)
    print(f"answers {load.answers}, retries {load.retries}, accepted {len(load.accepted)}")
    assert load.answers.get("no answer", 0) + load.answers.get("503", 0) > 0, (
        "the kill did not interrupt the load; the test proved nothing"
    )
    ids = {order_id.replace("-", "") for order_id in load.accepted.values()}
    assert len(ids) == len(load.accepted), "two Idempotency-Keys answered with one order"

    def stored() -> tuple[list[list[str]], dict[str, str]]:
        """The product's orders (id, status), and the aliases of those orders: an async retry
        whose intake could not claim its key in time (the database slow under the restart)
        answered with an id of its own, which the consumer joined to the first order."""
        rows = deployment.sql(
            f"SELECT LOWER(HEX(id)), status FROM orders WHERE product_id = {int(product)}"
        )
        aliases = deployment.sql(
            "SELECT LOWER(HEX(a.id)), LOWER(HEX(a.order_id)) FROM order_aliases a "
            f"JOIN orders o ON o.id = a.order_id WHERE o.product_id = {int(product)}"
        )
        return rows, dict(aliases)

    deadline = time.monotonic() + 120
    rows, aliases = stored()
    while {aliases.get(i, i) for i in ids} - {row[0] for row in rows}:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
        rows, aliases = stored()
    stored_ids = [row[0] for row in rows]
    assert len(stored_ids) == len(set(stored_ids))
    answered = {aliases.get(i, i) for i in ids}
    assert len(answered) == len(ids), "two Idempotency-Keys joined one order"
    assert set(stored_ids) == answered, (
        f"lost {len(answered - set(stored_ids))}, not accepted {len(set(stored_ids) - answered)}"
    )
    print(f"stored {len(stored_ids)}, {len(aliases)} answered with an alias id")
    confirmed = sum(1 for row in rows if row[1] == "confirmed")
    [[stock]] = deployment.sql(f"SELECT stock FROM products WHERE id = {int(product)}")
    assert int(stock) + confirmed == initial


# Each container's secrets volume: only its own accounts' passwords, and the CA (a server: its
# certificate and key too). deploy/compose/identities.py makes them.
HOLDINGS = {
    "product-service": {"ca.pem", "db_password", "kafka_password"},
    "order-service": {
        "ca.pem",
        "db_password",
        "kafka_password",
        "rabbitmq_password",
        "rabbitmq_consumer_password",
    },
    "mysql": {
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "db_migrate_password",
        "db_products_password",
        "db_orders_password",
    },
    "kafka": {
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "kafka_admin_password",
        "kafka_controller_password",
    },
    "rabbitmq": {"ca.pem", "server.pem", "server-key.pem", "rabbitmq_admin_password"},
}


def test_each_container_holds_only_its_own_accounts(deployment: Deployment) -> None:
    for service, wanted in HOLDINGS.items():
        listed = deployment.compose("exec", "-T", service, "ls", "/run/shop-secrets").split()
        assert set(listed) == wanted, service
    env = deployment.compose("exec", "-T", "product-service", "env")
    assert "RABBITMQ_PASSWORD=" in env.splitlines()  # empty: no account
    assert "RABBITMQ_PASSWORD_FILE" not in env, "the product service has a RabbitMQ account"
    for api in ("product-service", "order-service"):
        assert "signing.pem" not in deployment.compose("exec", "-T", api, "ls", "/auth-public")


# Run in the product service's container as the product service (its settings, its accounts):
# write order rows, and log in without TLS; read its own table as a check that the account works.
_PRODUCTS_ON_ORDERS = """
import asyncio, json, asyncmy, asyncmy.errors
from shop.settings import load_settings

db = load_settings().db

async def attempt(sql, tls=True):
    try:
        conn = await asyncmy.connect(
            host=db.host, port=db.port, user=db.user, password=db.password, database=db.name,
            **(db.connect_args() if tls else {"connect_timeout": 5}))
    except asyncmy.errors.Error as exc:
        return ["login refused", exc.args[0]]
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
        await conn.commit()
        return ["ok"]
    except asyncmy.errors.Error as exc:
        return ["refused", exc.args[0]]
    finally:
        await conn.ensure_closed()

async def main():
    return {
        "user": db.user,
        "read products": await attempt("SELECT COUNT(*) FROM products"),
        "insert": await attempt(
            "INSERT INTO orders (id, user_id, product_id, quantity, status, unit_price,"
            " total_price, channel) VALUES (UNHEX(REPEAT('ab', 16)), 1, 1, 1, 'confirmed', 1, 1,"
            " 'sync')"),
        "update": await attempt("UPDATE orders SET status = 'cancelled'"),
        "delete": await attempt("DELETE FROM orders"),
        "no tls": await attempt("SELECT 1", tls=False),
    }

print(json.dumps(asyncio.run(main())))
"""


def test_the_product_services_database_account_cannot_write_orders(
    deployment: Deployment,
) -> None:
    before = deployment.sql("SELECT COUNT(*), COALESCE(SUM(status = 'cancelled'), 0) FROM orders")
    seen = deployment.python("product-service", _PRODUCTS_ON_ORDERS)
    assert seen["user"] == "shop_products"
    assert seen["read products"] == ["ok"], seen
    for statement in ("insert", "update", "delete"):
        # 1142: "… command denied to user 'shop_products' for table 'orders'"
        assert seen[statement] == ["refused", 1142], seen
    # REQUIRE SSL (1045, MariaDB) or require_secure_transport (3159): the right password over a
    # plain connection is refused too.
    assert seen["no tls"][0] == "login refused", seen
    assert seen["no tls"][1] in (1045, 3159), seen
    after = deployment.sql("SELECT COUNT(*), COALESCE(SUM(status = 'cancelled'), 0) FROM orders")
    assert after == before


# Run in the product service's container: a producer with its Kafka account (SASL_SSL as
# `products`) on the order command topic.
_PRODUCTS_ON_KAFKA = """
import json
from confluent_kafka import Producer
from shop.messaging.kafka import producer_config
from shop.settings import load_settings

kafka = load_settings().kafka
config = {**producer_config(kafka, delivery_timeout=10), "error_cb": lambda _e: None}
config.pop("logger")
producer = Producer(config)
reports = []
producer.produce(kafka.topic, key=b"k", value=b"{}", on_delivery=lambda e, _m: reports.append(e))
producer.flush(30)
print(json.dumps({"user": kafka.user, "topic": kafka.topic,
                  "report": reports[0] and reports[0].name()}))
"""


def _produce_from_host(kafka: Kafka, topic: str) -> tuple[str | None, set[str]]:
    """One message to `topic` through the published port: the delivery report's error name
    (None: delivered) and the names of the errors librdkafka reported meanwhile."""
    errors: set[str] = set()
    config = {
        **producer_config(kafka, delivery_timeout=8),
        "error_cb": lambda err: errors.add(err.name()),
    }  # librdkafka's own lines go to its `logger`, so to pytest's log capture
    producer = Producer(config)
    reports: list[KafkaError | None] = []
    producer.produce(topic, key=b"k", value=b"{}", on_delivery=lambda e, _m: reports.append(e))
    assert producer.flush(30) == 0
    (report,) = reports
    return (report.name() if report is not None else None), errors


def test_kafka_refuses_order_commands_without_the_order_services_account(
    deployment: Deployment, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(
        deployment.compose("exec", "-T", "product-service", "cat", "/run/shop-secrets/ca.pem")
    )
    broker = Kafka(brokers=f"localhost:{deployment.ports['kafka']}", ca_file=str(ca))
    for anonymous in (
        broker.model_copy(update={"security_protocol": "PLAINTEXT"}),  # no TLS, no account
        broker.model_copy(update={"security_protocol": "SSL"}),  # TLS, no account
    ):
        report, errors = _produce_from_host(anonymous, "orders")
        assert report == "_MSG_TIMED_OUT", (anonymous.security_protocol, report, errors)
    wrong = broker.model_copy(
        update={"security_protocol": "SASL_SSL", "user": "orders", "password": "not-the-password"}
    )
    report, errors = _produce_from_host(wrong, "orders")
    assert report is not None
    assert "_AUTHENTICATION" in errors, (report, errors)
    # The product service's own account gets in, and is refused the topic.
    seen = deployment.python("product-service", _PRODUCTS_ON_KAFKA)
    assert (seen["user"], seen["topic"]) == ("products", "orders")
    assert seen["report"] == "TOPIC_AUTHORIZATION_FAILED", seen


async def test_rabbitmq_takes_amqp_over_tls_from_its_users_only(
    deployment: Deployment, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(
        deployment.compose("exec", "-T", "product-service", "cat", "/run/shop-secrets/ca.pem")
    )
    port = deployment.ports["rabbitmq"]

    async def login(url: str) -> str:
        try:
            connection = await asyncio.wait_for(aiormq.connect(url), 15)
        except Exception as exc:  # whatever refused it: named below
            return type(exc).__name__
        await connection.close()
        return "connected"

    tls = f"?cafile={ca}"
    assert await login(f"amqp://guest:guest@127.0.0.1:{port}/") != "connected"
    for account in ("guest:guest", "shop-intake:not-the-password", "shop-admin:guest"):
        refused = await login(f"amqps://{account}@localhost:{port}/{tls}")
        assert refused in ("ProbableAuthenticationError", "AuthenticationError"), (account, refused)


async def test_an_order_flows_on_every_path_with_the_services_own_accounts(
    deployment: Deployment,
) -> None:
    signing = _issuer_key(deployment)
    user = 3001
    token = dev_issuer.issue(signing, issuer="shop-dev", audience="shop", subject=str(user))
    catalogue = dev_issuer.issue(
        signing, issuer="shop-dev", audience="shop", subject="ops", scopes=["products:write"]
    )
    async with (
        httpx.AsyncClient(base_url=deployment.url("product"), timeout=10) as products,
        httpx.AsyncClient(base_url=deployment.url("order"), timeout=10) as orders,
    ):
        await _three_paths(products, orders, catalogue, user, token)


async def _three_paths(
    products: httpx.AsyncClient, orders: httpx.AsyncClient, catalogue: str, user: int, token: str
) -> None:
    """A product, then one order on each path, each stored as confirmed."""
    created = await products.post(
        "/products",
        json={"name": "three paths", "price": 2.0, "stock": 10},
        headers={"Authorization": f"Bearer {catalogue}"},
    )
    assert created.status_code == 201, created.text
    load = Load(orders, {user: token}, created.json()["id"])
    for path in PATHS:
        await load.order(user, path)
    headers = {"Authorization": f"Bearer {token}"}
    # After a broker restart on a busy machine, a consumer may take a while to rejoin its group.
    for path, order_id in zip(PATHS, load.accepted.values(), strict=True):
        deadline = time.monotonic() + 120
        while (
            answer := await orders.get(f"/orders/{order_id}", headers=headers)
        ).status_code == 404:
            assert time.monotonic() < deadline, f"{path} order {order_id} never stored"
            await asyncio.sleep(0.5)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "confirmed", answer.text


async def test_kafka_and_rabbitmq_restarted_with_compose_serve_again(
    deployment: Deployment,
) -> None:
    signing = _issuer_key(deployment)
    user = 2001
    token = dev_issuer.issue(signing, issuer="shop-dev", audience="shop", subject=str(user))
    catalogue = dev_issuer.issue(
        signing, issuer="shop-dev", audience="shop", subject="ops", scopes=["products:write"]
    )
    deployment.compose("restart", "kafka", "rabbitmq", timeout=180)
    await asyncio.to_thread(_ready, deployment, "order", timeout=180)
    await asyncio.to_thread(_ready, deployment, "product", timeout=180)
    async with (
        httpx.AsyncClient(base_url=deployment.url("product"), timeout=10) as products,
        httpx.AsyncClient(base_url=deployment.url("order"), timeout=10) as orders,
    ):
        await _three_paths(products, orders, catalogue, user, token)
