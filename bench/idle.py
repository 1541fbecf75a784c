"""Idle latency of the asynchronous paths: single orders, each from its 202 to its stored row.

With the system idle, 100 orders are sent one at a time to each asynchronous path, each by a
customer of its own with their own token (`bench.customers`). After each 202 the order's row is
looked up in the database by primary key every 2 ms until it is there (committed by a
consumer, `confirmed` or `rejected`); only then is the next order sent. The
figure is "202 received -> row visible to a reader": it can overstate the true delay by one
poll interval plus one primary-key lookup (about 2.5 ms), never understate it.

The row is read directly, not through `GET /orders/{id}`: polling the order service every 2 ms
would put that load on the event loop that also runs the consumers being measured.

    python -m bench.idle            # against the services in the settings (ports 8080/8081)
    python -m bench.idle --orders 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from typing import Any

import asyncmy
import httpx

from bench.customers import Customers
from bench.loadgen import catalogue_headers
from shop.settings import Settings, load_settings

CHANNELS = ("kafka", "rabbitmq")
ORDERS = 100
POLL_SECONDS = 0.002
WARM_UP = 3  # orders per channel sent first and not counted (connections, first batch)
ORDER_TIMEOUT = 10.0  # an order not stored within this counts as timed out (a miss)
TARGET_P99_MS = 50.0


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max of `values` (nearest rank), rounded to 0.1 ms."""
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "count": len(ordered),
        "p50": round(pick(0.5), 1),
        "p99": round(pick(0.99), 1),
        "max": round(ordered[-1], 1),
    }


async def connect(settings: Settings) -> Any:
    """An autocommit connection to the shop database (bounded wait)."""
    return await asyncio.wait_for(
        asyncmy.connect(
            host=settings.db.host,
            port=settings.db.port,
            user=settings.db.user,
            password=settings.db.password,
            database=settings.db.name,
            autocommit=True,  # each SELECT sees what is committed at that moment
            **settings.db.connect_args(),
        ),
        timeout=10,
    )


async def _stored_after(db: Any, order_id: bytes, started: float) -> tuple[float, str | None]:
    """Milliseconds from `started` until the order's row is visible, and its status."""
    async with db.cursor() as cur:
        while True:
            await cur.execute("SELECT status FROM orders WHERE id = %s", (order_id,))
            row = await cur.fetchone()
            now = time.perf_counter()
            if row is not None:
                return (now - started) * 1000, str(row[0])
            if now - started > ORDER_TIMEOUT:
                return float("inf"), None
            await asyncio.sleep(POLL_SECONDS)


async def _one_channel(
    client: httpx.AsyncClient,
    db: Any,
    url: str,
    product_id: int,
    orders: int,
    rng: random.Random,
    customers: Customers,
    first: int,
) -> dict[str, Any]:
    """`orders` single orders (after WARM_UP uncounted ones), each from the next customer
    (customers[first], customers[first + 1], ...): one order per customer."""
    stored_ms: list[float] = []
    intake_ms: list[float] = []
    statuses: dict[str, int] = {}
    timed_out = refused = 0
    for i in range(-WARM_UP, orders):
        customer = first + WARM_UP + i
        body = {"user_id": customers.user(customer), "product_id": product_id, "quantity": 1}
        sent = time.perf_counter()
        response = await client.post(url, json=body, headers=customers.headers(customer))
        received = time.perf_counter()
        if response.status_code != 202:
            refused += i >= 0
            continue
        order_id = uuid.UUID(response.json()["id"]).bytes
        delay, status = await _stored_after(db, order_id, received)
        if i < 0:
            continue
        intake_ms.append((received - sent) * 1000)
        if status is None:
            timed_out += 1
        else:
            stored_ms.append(delay)
            statuses[status] = statuses.get(status, 0) + 1
        # A short random pause, so that the orders fall at every phase of any periodic timer
        # in the consumers (poll timeouts, linger) rather than in step with one.
        await asyncio.sleep(rng.uniform(0.0, 0.02))
    result: dict[str, Any] = {
        "orders": orders,
        "stored": len(stored_ms),
        "timed_out": timed_out,
        "refused": refused,
        "statuses": statuses,
        "intake_ms": percentiles(intake_ms),
        **percentiles(stored_ms),
        "samples_ms": [round(v, 1) for v in stored_ms],  # in sending order
    }
    # An order refused or not stored within the timeout fails the target whatever the p99.
    result["complete"] = not (timed_out or refused)
    return result


async def measure_async(settings: Settings, orders: int = ORDERS) -> dict[str, Any]:
    """Idle latency per channel, and the Kafka p99 target's verdict."""
    products = f"http://127.0.0.1:{settings.http.product_port}/products"
    orders_url = f"http://127.0.0.1:{settings.http.order_port}/orders/async"
    rng = random.Random(20261126)
    per_channel = WARM_UP + orders
    # One customer per order, each with their own token: far below any customer's rate limit.
    customers = Customers.make(settings, count=per_channel * len(CHANNELS))
    timeout = httpx.Timeout(10.0)
    async with httpx.AsyncClient(timeout=timeout) as client:
        created = await client.post(
            products,
            json={"name": "bench-idle", "price": 1.5, "stock": None},
            headers=catalogue_headers(settings),
        )
        created.raise_for_status()
        product_id = int(created.json()["id"])
        db = await connect(settings)
        try:
            channels = {
                channel: await _one_channel(
                    client,
                    db,
                    f"{orders_url}/{channel}",
                    product_id,
                    orders,
                    rng,
                    customers,
                    first=n * per_channel,
                )
                for n, channel in enumerate(CHANNELS)
            }
        finally:
            db.close()
    kafka = channels["kafka"]
    kafka_p99 = kafka.get("p99")
    return {
        "method": (
            f"{orders} orders one at a time per channel (after {WARM_UP} uncounted), each from "
            f"a customer of its own with their own token, "
            f"each from its 202 until its row is visible, polled every "
            f"{POLL_SECONDS * 1000:g} ms by primary key"
        ),
        "channels": channels,
        "target": {
            "name": f"Kafka p99 <= {TARGET_P99_MS:g} ms at idle",
            "measured_ms": kafka_p99,
            "met": kafka["complete"] and kafka_p99 is not None and kafka_p99 <= TARGET_P99_MS,
        },
    }


def measure(settings: Settings, orders: int = ORDERS) -> dict[str, Any]:
    return asyncio.run(measure_async(settings, orders))


def describe(result: dict[str, Any]) -> list[str]:
    """One console line per channel, then the verdict."""
    lines = []
    for channel, r in result["channels"].items():
        lines.append(
            f"idle {channel:8} {r['stored']}/{r['orders']} stored: p50 {r.get('p50', 0):.1f} ms"
            f"  p99 {r.get('p99', 0):.1f} ms  max {r.get('max', 0):.1f} ms"
            f"  (202 itself p50 {r['intake_ms'].get('p50', 0):.1f} ms)"
        )
    lines.append(verdict_line(result))
    return lines


def verdict_line(result: dict[str, Any]) -> str:
    target, kafka = result["target"], result["channels"]["kafka"]
    measured = "-" if target["measured_ms"] is None else f"{target['measured_ms']:.1f} ms"
    if not kafka["complete"]:
        measured += (
            f" ({kafka['timed_out']} not stored in {ORDER_TIMEOUT:g} s, {kafka['refused']} refused)"
        )
    return f"{'met ' if target['met'] else 'MISS'} {target['name']}: {measured}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=ORDERS, help="per channel (default 100)")
    args = parser.parse_args()
    result = measure(load_settings(), args.orders)
    for line in describe(result):
        print(f"bench: {line}", flush=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
