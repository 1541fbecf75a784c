"""`shop consume --health-port`: a consumer process answers the probes an orchestrator sends
(the Helm chart's consumers Deployment) and still stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack import identities
from tests.conftest import TEST_ENV
from tests.support import eventually, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def consumer(
    database: AsyncEngine, kafka_topics: None, rabbitmq_cleanup: None, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    log = tmp_path / "consumer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shop", "consume", "all", "--health-port", str(port)],
            env={**os.environ, **identities.service_env("orders"), **TEST_ENV},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_consumer_process_answers_health_and_readiness_probes_then_stops_on_sigterm(
    consumer: tuple[subprocess.Popen[bytes], str, Path],
) -> None:
    proc, url, log = consumer

    async def ready() -> httpx.Response | None:
        assert proc.poll() is None, f"the consumer exited; see {log}"
        async with httpx.AsyncClient(timeout=5) as client:
            answer = await client.get(f"{url}/readyz")
        return answer if answer.status_code == 200 else None

    readiness = await eventually(ready, timeout=30, what="consumer readiness")
    assert readiness.json()["checks"] == {"database": "ok", "kafka": "ok", "rabbitmq": "ok"}
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{url}/healthz")).json() == {"status": "ok"}
        metrics = await client.get(f"{url}/metrics")
    assert "order_dead_letters_total" in metrics.text

    proc.terminate()
    assert proc.wait(timeout=20) == 0, f"the consumer did not stop cleanly; see {log}"
    assert "consumer stopped" in log.read_text(errors="replace")
