"""Helpers the tests share: bounded waiting, Kafka reading, service processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
from confluent_kafka import Consumer, TopicPartition

from devstack import identities
from devstack.identities import Service
from devstack.kafka import as_admin
from devstack.settings import StackSettings
from shop import jsonutil
from shop.messaging.kafka import client_config
from shop.messaging.ports import Outgoing, PublishError
from shop.messaging.rabbitmq import RabbitBroker
from shop.settings import Kafka, Settings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Retry `probe` until it returns a truthy value without raising, for at most `timeout`."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = await probe()
            if result:
                return result
        except Exception as exc:  # the probe may fail while the system settles
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s (last error: {last!r})")
        await asyncio.sleep(interval)


def observer(settings: Settings) -> Kafka:
    """Kafka as a test that watches topics (events, dead letters) or makes scratch ones: the
    stack's administrator, who may read and write any topic in any group."""
    assert isinstance(settings, StackSettings), "the tests' settings are the stack's"
    return as_admin(settings)


def read_events(
    kafka: Kafka,
    topic: str,
    *,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float,
    settle: float = 1.5,
) -> list[dict[str, Any]]:
    """Read a topic from its beginning until `until(events)` holds, then `settle` seconds more
    (so that an extra, duplicated event would be seen too). Blocking: call via to_thread."""
    consumer = Consumer(
        {
            **client_config(kafka),
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    events: list[dict[str, Any]] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < (settle_until or deadline):
            msg = consumer.poll(0.2)
            value = None if msg is None or msg.error() else msg.value()
            if value is not None:
                events.append(jsonutil.loads(value))
            if settle_until is None and until(events):
                settle_until = time.monotonic() + settle
    finally:
        consumer.close()
    return events


def topic_size(kafka: Kafka, topic: str) -> int:
    """How many messages a topic holds (sum of high watermarks)."""
    consumer = Consumer({**client_config(kafka), "group.id": "test-size"})
    try:
        meta = consumer.list_topics(topic, timeout=5).topics[topic]
        total = 0
        for pid in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, pid), timeout=5)
            total += high - low
        return total
    finally:
        consumer.close()


class ServiceProcess:
    """One `shop serve NAME` child process with its own environment and log file."""

    def __init__(self, name: str, *, port: int, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        # The service's own accounts on the stack's servers, unless `env` names others.
        self._env = {**os.environ, **identities.service_env(cast("Service", name)), **env}
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, f"{self.name} is not running"
        return self._proc.pid

    async def start(self, *, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "shop", "serve", self.name],
            env=self._env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        async def healthy() -> bool:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{self.url}/healthz")).status_code == 200

        try:
            await eventually(healthy, timeout=timeout, what=f"{self.name} service start")
        except BaseException:
            self.kill()  # a service that did not come up in time must not outlive the run
            raise

    def stop(self, *, timeout: float = 15.0) -> bool:
        """SIGTERM, as an orchestrator would; True if the service shut down cleanly in time."""
        if self._proc is None:
            return True
        self._proc.terminate()
        try:
            code = self._proc.wait(timeout=timeout)
            # uvicorn re-raises the signal it handled once its graceful shutdown is complete.
            clean = "Application shutdown complete" in self.log_path.read_text(errors="replace")
            return code in (0, -signal.SIGTERM) and clean
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            raise AssertionError(f"{self.name} did not stop within {timeout}s") from None
        finally:
            self._proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown code runs at all."""
        if self._proc is None:
            return
        self._proc.kill()
        try:
            self._proc.wait(timeout=10)
        finally:
            self._proc = None


class PageReferences(HTMLParser):
    """Every URL a page loads: script src, link href, ReDoc's spec-url."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is not None and name in {"src", "href", "spec-url"}:
                self.urls.append(value)


def free_port() -> int:
    """A port nothing listens on now, so two test runs on one machine never share services."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def confirmed(broker: RabbitBroker, *, timeout: float = 2.0) -> bool:
    """Whether one message published to the broker's queue was confirmed."""
    try:
        await broker.publisher().publish([Outgoing("probe", b"{}")], timeout=timeout)
    except PublishError:
        return False
    return True


def short_soak(*flags: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """Run `python -m bench.soak` with `flags` to its end; its soak.json (audit, faults,
    verdicts) and its exit: "" for 0, else the end of its stderr."""
    results = ROOT / "bench" / "results"
    before = set(results.glob("*-soak")) if results.exists() else set()
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", *flags],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    (run,) = set(results.glob("*-soak")) - before
    result: dict[str, Any] = json.loads((run / "soak.json").read_text())  # (NaN: a gap)
    result["report_bytes"] = (run / "report.html").stat().st_size
    return result, "" if done.returncode == 0 else done.stderr[-3000:]


def assert_soak_audit_clean(result: dict[str, Any]) -> None:
    """Nothing lost, duplicated, oversold or without its event; product versions
    consecutive; at least three faults struck and back; drained; every bound held."""
    found = result["audit"]
    assert found["accepted"] > 0
    assert found["stored"] >= found["accepted"]
    for name in ("lost", "duplicated", "oversold", "stock_mismatch", "orders_without_event"):
        assert found[name] == 0, (name, found)
    assert not found["products_with_version_gaps"], found["products_with_version_gaps"]
    struck = [f for f in result["faults"] if "error" not in f]
    assert len(struck) >= 3, result["faults"]
    assert result["drain_seconds"] is not None
    failed = [v for v in result["verdicts"] if not v["held"]]
    assert not failed, failed
