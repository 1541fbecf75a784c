"""Idle latency of the async order paths: 202 to stored, one order at a time.

Starts the two services of this checkout on free ports with a private database, topics and
queue (so a running system is not touched), sends `--orders` single orders one after the
other and polls `GET /orders/{id}` every millisecond until it is stored. Prints p50/p99/max.

    .venv/bin/python -m bench.idle_latency --path kafka --orders 100
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncmy
import httpx
from confluent_kafka.admin import AdminClient
from tests.conftest import _free_port
from tests.support import ServiceProcess

from shop.settings import load_settings


async def _stored_after(client: httpx.AsyncClient, path: str, product_id: int) -> float:
    body = {"user_id": 1, "product_id": product_id, "quantity": 1}
    answer = await client.post(f"/orders/async/{path}", json=body)
    assert answer.status_code == 202, answer.text
    accepted = time.perf_counter()
    order_id = answer.json()["id"]
    deadline = accepted + 10
    while time.perf_counter() < deadline:
        if (await client.get(f"/orders/{order_id}")).status_code == 200:
            return time.perf_counter() - accepted
        await asyncio.sleep(0.001)
    raise AssertionError(f"order {order_id} not stored within 10 s")


async def _drop(name: str) -> None:
    s = load_settings()
    conn = await asyncmy.connect(
        host=s.db_host, port=s.db_port, user=s.db_user, password=s.db_password, connect_timeout=5
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def _delete_broker_objects(run: str) -> None:
    s = load_settings()
    admin = AdminClient({"bootstrap.servers": s.kafka_brokers})
    doomed = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"test-{run}-")]
    if doomed:
        for fut in admin.delete_topics(doomed, operation_timeout=10).values():
            fut.result(timeout=15)
    api = f"http://{s.rabbitmq_host}:{s.rabbitmq_management_port}/api"
    with httpx.Client(auth=(s.rabbitmq_user, s.rabbitmq_password), timeout=10) as client:
        for kind in ("queues", "exchanges"):
            for item in client.get(f"{api}/{kind}/%2F").json():
                if item["name"].startswith(f"test-{run}-"):
                    client.delete(f"{api}/{kind}/%2F/{item['name']}")


async def measure(path: str, count: int) -> list[float]:
    run = f"lat-{uuid.uuid4().hex[:8]}"
    env = {
        "DB_NAME": f"shop_{run.replace('-', '_')}",
        "KAFKA_TOPIC": f"test-{run}-orders",
        "KAFKA_PRODUCT_EVENTS_TOPIC": f"test-{run}-product-events",
        "KAFKA_ORDER_EVENTS_TOPIC": f"test-{run}-order-events",
        "KAFKA_DLQ_TOPIC": f"test-{run}-orders.dlq",
        "KAFKA_CONSUMER_GROUP": f"test-{run}-order-service",
        "RABBITMQ_QUEUE": f"test-{run}-orders",
        "PRODUCT_SERVICE_PORT": str(_free_port()),
        "ORDER_SERVICE_PORT": str(_free_port()),
        "LOG_LEVEL": "WARNING",
    }
    migrate = [sys.executable, "-m", "shop", "migrate"]
    await asyncio.to_thread(subprocess.run, migrate, env={**os.environ, **env}, check=True)
    logs = Path(tempfile.mkdtemp(prefix="idle-latency-"))
    services = [
        ServiceProcess(name, port=int(env[var]), env=env, log_path=logs / f"{name}.log")
        for name, var in (("products", "PRODUCT_SERVICE_PORT"), ("orders", "ORDER_SERVICE_PORT"))
    ]
    try:
        for service in services:
            await service.start()
        async with httpx.AsyncClient(base_url=services[0].url, timeout=10) as products:
            made = await products.post("/products", json={"name": run, "price": 1.0, "stock": None})
            product_id = made.json()["id"]
        async with httpx.AsyncClient(base_url=services[1].url, timeout=10) as orders:
            await _stored_after(orders, path, product_id)  # warm-up: partitions assigned
            await asyncio.sleep(1.0)  # idle before each measured order, as a user would see
            took = []
            for _ in range(count):
                took.append(await _stored_after(orders, path, product_id))
                await asyncio.sleep(0.05)
            return took
    finally:
        for service in services:
            service.stop()
        await _drop(env["DB_NAME"])
        await asyncio.to_thread(_delete_broker_objects, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--path", choices=("kafka", "rabbitmq"), default="kafka")
    parser.add_argument("--orders", type=int, default=100)
    args = parser.parse_args()
    took = sorted(asyncio.run(measure(args.path, args.orders)))
    ms = [t * 1000 for t in took]
    p99 = ms[min(len(ms) - 1, round(0.99 * len(ms)) - 1)]
    print(
        f"{args.path}: {len(ms)} single orders, 202 -> stored: p50 {statistics.median(ms):.1f} ms,"
        f" p99 {p99:.1f} ms, max {ms[-1]:.1f} ms, min {ms[0]:.1f} ms"
    )


if __name__ == "__main__":
    main()
