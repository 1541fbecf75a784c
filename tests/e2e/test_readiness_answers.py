"""`/readyz` of a running service whose broker does not answer: 503 naming the part that
fails (`kafka`, `rabbitmq`), without the exception's text; that goes to the service's log.
(`test_readiness.py` stops MariaDB itself; these point a private service at a closed port, or
give it a wrong Kafka password.)"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack import identities
from devstack.settings import StackSettings
from tests.conftest import TEST_ENV
from tests.support import ServiceProcess, eventually, free_port

pytestmark = pytest.mark.e2e

CASES = {
    # service, the setting pointed at a closed port, the part /readyz must name
    "products": ("PRODUCT_SERVICE_PORT", {"KAFKA_BROKERS": "127.0.0.1:{closed}"}, "kafka"),
    "orders": ("ORDER_SERVICE_PORT", {"RABBITMQ_PORT": "{closed}"}, "rabbitmq"),
}


@pytest.mark.parametrize("service", CASES)
async def test_readyz_names_the_part_that_fails_and_logs_why(
    database: AsyncEngine, tmp_path: Path, service: str
) -> None:
    port_setting, broken, failing = CASES[service]
    closed = free_port()  # nothing listens there
    env = {
        **TEST_ENV,
        port_setting: str(free_port()),
        "CONSUMERS_ENABLED": "false",  # (orders) not a second consumer of the session's queues
        **{name: value.format(closed=closed) for name, value in broken.items()},
    }
    process = ServiceProcess(
        service, port=int(env[port_setting]), env=env, log_path=tmp_path / f"{service}.log"
    )
    await process.start()
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=15) as client:

            async def not_ready() -> httpx.Response | None:
                answer = await client.get("/readyz")
                return answer if answer.status_code == 503 else None

            answer = await eventually(not_ready, timeout=30, what=f"/readyz naming {failing}")
    finally:
        process.stop()
    problem = answer.json()
    assert answer.headers["content-type"] == "application/problem+json"
    assert problem["detail"] == f"Unreachable: {failing}"
    assert problem["checks"][failing] in ("failed", "timed out")
    assert problem["checks"]["database"] == "ok"
    assert set(problem["checks"].values()) <= {"ok", "failed", "timed out"}
    assert str(closed) not in answer.text, "the exception's text is in the answer"
    assert f"readiness: {failing}" in process.log_path.read_text(errors="replace")


async def test_readyz_names_rabbitmq_when_it_refuses_the_account_and_the_log_says_so(
    database: AsyncEngine, rabbitmq_cleanup: None, tmp_path: Path
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    port = free_port()
    env = {
        **identities.service_env("orders"),
        **TEST_ENV,
        "ORDER_SERVICE_PORT": str(port),
        "CONSUMERS_ENABLED": "false",  # not a second consumer of the session's queues
        "RABBITMQ_PASSWORD": wrong,  # intake's account, with a password that is not its own
    }
    process = ServiceProcess("orders", port=port, env=env, log_path=tmp_path / "orders.log")
    await process.start()
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=15) as client:

            async def not_ready() -> httpx.Response | None:
                answer = await client.get("/readyz")
                return answer if answer.status_code == 503 else None

            answer = await eventually(not_ready, timeout=30, what="/readyz naming rabbitmq")

            async def refusal_logged() -> bool:
                return "ACCESS_REFUSED" in process.log_path.read_text(errors="replace")

            await eventually(refusal_logged, timeout=30, what="ACCESS_REFUSED in the log")
    finally:
        process.stop()
    problem = answer.json()
    assert problem["detail"] == "Unreachable: rabbitmq"
    assert problem["checks"]["rabbitmq"] == "failed"
    assert "ACCESS_REFUSED" not in answer.text
    assert "shop-intake" not in answer.text
    log = process.log_path.read_text(errors="replace")
    assert "RABBITMQ_PASSWORD" in log  # says which setting to check
    assert wrong not in log
    assert identities.service_env("orders")["RABBITMQ_PASSWORD"] not in log


async def test_a_refused_kafka_password_is_named_in_the_log_and_readyz_says_kafka(
    database: AsyncEngine, settings: StackSettings, tmp_path: Path
) -> None:
    if not settings.kafka.security_protocol.startswith("SASL_"):
        pytest.skip("the broker takes anyone (KAFKA_SECURITY_PROTOCOL without SASL)")
    wrong = "wrong-" + uuid.uuid4().hex
    port = free_port()
    env = {**TEST_ENV, "PRODUCT_SERVICE_PORT": str(port), "KAFKA_PASSWORD": wrong}
    process = ServiceProcess("products", port=port, env=env, log_path=tmp_path / "products.log")
    await process.start()
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=15) as client:

            async def not_ready() -> httpx.Response | None:
                answer = await client.get("/readyz")
                return answer if answer.status_code == 503 else None

            answer = await eventually(not_ready, timeout=30, what="/readyz naming kafka")

            async def logged() -> bool:
                return "SASL authentication failed" in process.log_path.read_text()

            await eventually(logged, timeout=15, what="the refusal in the log")
    finally:
        process.stop()
    problem = answer.json()
    assert "kafka" in problem["detail"]
    assert problem["checks"]["kafka"] in ("failed", "timed out")
    for leak in ("SASL", "authentication", "'products'", wrong):
        assert leak not in answer.text, f"{leak!r} is in the answer"
    log = process.log_path.read_text(errors="replace")
    assert "SASL authentication failed as 'products' (SCRAM-SHA-512 over SASL_SSL)" in log
    assert wrong not in log
    assert identities.password("kafka:products") not in log
