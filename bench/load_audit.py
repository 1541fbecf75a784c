"""A small load on every order path, then the audit: lost, duplicated, oversold must all be 0.

Usage (against a running system, `make up`):
    .venv/bin/python -m bench.load_audit --per-path 2000 [--concurrency 64]

Prints one JSON object: per path, the orders sent, accepted (201/202), refused (409) and stored;
then the audit. Exits 1 if any audit count is not zero. Not a throughput benchmark: the
client here is Python (see `make bench` for that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

import httpx

from bench.run import query
from shop.settings import Settings, load_settings

PATHS = ("sync", "kafka", "rabbitmq")


async def _product(client: httpx.AsyncClient, url: str, stock: int | None) -> int:
    response = await client.post(
        f"{url}/products",
        json={"name": f"load-{uuid.uuid4().hex[:8]}", "price": 1.25, "stock": stock},
    )
    response.raise_for_status()
    product_id: int = response.json()["id"]
    return product_id


def _stored(settings: Settings, product_ids: list[int]) -> dict[str, tuple[int, str, str, int]]:
    marks = ",".join(["%s"] * len(product_ids))
    rows = query(
        settings,
        f"SELECT id, product_id, status, channel, quantity FROM orders "
        f"WHERE product_id IN ({marks})",
        product_ids,
    )
    return {str(uuid.UUID(bytes=r[0])): (r[1], r[2], r[3], r[4]) for r in rows}


def _stock(settings: Settings, product_id: int) -> int | None:
    rows = query(settings, "SELECT stock FROM products WHERE id = %s", (product_id,))
    return None if not rows else rows[0][0]


async def main(per_path: int, concurrency: int, drain_timeout: float) -> int:
    s = load_settings()
    products_url = f"http://127.0.0.1:{s.product_service_port}"
    orders_url = f"http://127.0.0.1:{s.order_service_port}"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        initial = per_path  # a third of the orders (a mix of paths) will find no stock
        tracked = await _product(client, products_url, initial)
        untracked = await _product(client, products_url, None)
        answers: dict[str, dict[str, Any]] = {
            p: {"sent": 0, "accepted": [], "refused": 0, "errors": 0} for p in PATHS
        }
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, path: str) -> None:
            product = tracked if i % 2 else untracked
            url = (
                f"{orders_url}/orders/sync"
                if path == "sync"
                else f"{orders_url}/orders/async/{path}"
            )
            async with gate:
                response = await client.post(
                    url, json={"user_id": i + 1, "product_id": product, "quantity": 1}
                )
            tally = answers[path]
            tally["sent"] += 1
            if response.status_code in (201, 202):
                tally["accepted"].append(response.json()["id"])
            elif response.status_code == 409:
                tally["refused"] += 1
            else:
                tally["errors"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(i, PATHS[i % 3]) for i in range(per_path * 3)))
        sent_seconds = time.perf_counter() - started
    accepted = {i: p for p, t in answers.items() for i in t["accepted"]}
    deadline = time.monotonic() + drain_timeout
    while True:
        stored = await asyncio.to_thread(_stored, s, [tracked, untracked])
        if set(accepted) <= set(stored) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    drained_seconds = time.perf_counter() - started
    stock_now = await asyncio.to_thread(_stock, s, tracked)
    confirmed_units = sum(
        q for (pid, status, _, q) in stored.values() if pid == tracked and status == "confirmed"
    )
    audit = {
        # accepted (201/202) but never stored
        "lost": len(set(accepted) - set(stored)),
        # stored without having been accepted: a second copy under another id
        "duplicated": sum(1 for order_id in stored if order_id not in accepted),
        # units confirmed beyond the initial stock, or stock that does not add up
        "oversold": max(0, confirmed_units - initial)
        + abs(initial - ((stock_now or 0) + confirmed_units)),
    }
    report = {
        "per_path": {
            p: {
                "sent": t["sent"],
                "accepted": len(t["accepted"]),
                "refused_409": t["refused"],
                "errors": t["errors"],
                "stored": sum(1 for i in t["accepted"] if i in stored),
                "confirmed": sum(
                    1 for i in t["accepted"] if stored.get(i, (0, ""))[1] == "confirmed"
                ),
                "rejected": sum(
                    1 for i in t["accepted"] if stored.get(i, (0, ""))[1] == "rejected"
                ),
            }
            for p, t in answers.items()
        },
        "tracked_product": {
            "initial_stock": initial,
            "stock_now": stock_now,
            "confirmed_units": confirmed_units,
        },
        "seconds": {
            "sending": round(sent_seconds, 2),
            "until_all_stored": round(drained_seconds, 2),
        },
        "audit": audit,
    }
    print(json.dumps(report, indent=2))
    return 0 if not any(audit.values()) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-path", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--drain-timeout", type=float, default=120)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.per_path, args.concurrency, args.drain_timeout)))
