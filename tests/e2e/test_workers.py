"""With several worker processes, /metrics counts the requests of all of them; the order
consumers' process yields the CPU to the HTTP workers."""

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


def _children(pid: int) -> dict[int, tuple[str, int]]:
    """The child processes of `pid`: their command line and nice value."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:  # ppid; nice is field 19 of stat, 16 after the name
            found[int(stat.parent.name)] = (cmdline, int(fields[16]))
    return found


async def test_the_consumer_process_runs_at_a_lower_priority_than_the_http_workers(
    order_service: ServiceProcess, settings: Settings
) -> None:
    children = _children(order_service.pid)
    consumers = [nice for cmdline, nice in children.values() if " consume " in cmdline]
    workers = [nice for cmdline, nice in children.values() if " consume " not in cmdline]
    assert consumers == [settings.orders.consumer_nice]
    assert settings.orders.consumer_nice > 0
    assert workers
    assert set(workers) == {0}
