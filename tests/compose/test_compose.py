"""`docker compose up -d --wait` for real (`make test-compose`): the README's walk against it,
the order service SIGKILLed under load with every accepted order stored exactly once, Kafka and
RabbitMQ restarted, and `down -v` leaving nothing behind.

`make test-compose` starts an engine if none answers, builds the compose plugin and, where no
registry answers, the local images (COMPOSE_ENV_FILES names deploy/compose/local-images.env).
The test runs its own compose project on free ports published on 127.0.0.1; it talks only to
those ports and to the containers of that project.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from shop.access import dev_issuer
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
        container (the password never leaves the container)."""
        script = (
            'MYSQL_PWD="$(cat /run/shop-secrets/db_migrate_password)" '
            'exec mysql --user="$MYSQL_USER" --batch --skip-column-names "$MYSQL_DATABASE" -e "$0"'
        )
        out = self.compose("exec", "-T", "mysql", "sh", "-c", script, query)
        return [line.split("\t") for line in out.splitlines() if line]

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
    for name in ("DB_PASSWORD", "DB_MIGRATE_PASSWORD", "RABBITMQ_PASSWORD"):
        env.pop(name, None)  # the deployment makes its own
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
        created = await products.post(
            "/products",
            json={"name": "after restarts", "price": 2.0, "stock": 10},
            headers={"Authorization": f"Bearer {catalogue}"},
        )
        assert created.status_code == 201, created.text
        load = Load(orders, {user: token}, created.json()["id"])
        for path in PATHS:
            await load.order(user, path)
        headers = {"Authorization": f"Bearer {token}"}
        for order_id in load.accepted.values():
            deadline = time.monotonic() + 60
            while (
                answer := await orders.get(f"/orders/{order_id}", headers=headers)
            ).status_code == 404:
                assert time.monotonic() < deadline, f"order {order_id} never stored"
                await asyncio.sleep(0.5)
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "confirmed", answer.text
