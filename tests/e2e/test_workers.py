"""With several worker processes, /metrics counts the requests of all of them."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx
import pytest

from shop.settings import Settings
from tests.conftest import TEST_ENV
from tests.support import ServiceProcess

pytestmark = pytest.mark.e2e


def _healthz_count(metrics: str) -> float:
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r'^http_requests_total\{[^}]*route="/healthz"[^}]*\} (\S+)$', metrics, re.MULTILINE
        )
    )


async def test_metrics_add_up_across_two_workers(
    settings: Settings, database: object, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = ServiceProcess(
        "products",
        port=port,
        log_path=tmp_path / "products.log",
        env={**TEST_ENV, "PRODUCT_SERVICE_PORT": str(port), "WORKERS": "2"},
    )
    await service.start()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            before = _healthz_count((await client.get(f"{service.url}/metrics")).text)
        for _ in range(60):  # a new connection each time, so both workers answer some
            async with httpx.AsyncClient(timeout=10) as client:
                assert (await client.get(f"{service.url}/healthz")).status_code == 200
        async with httpx.AsyncClient(timeout=10) as client:
            after = _healthz_count((await client.get(f"{service.url}/metrics")).text)
        assert after - before == 60
    finally:
        assert service.stop(timeout=20)
