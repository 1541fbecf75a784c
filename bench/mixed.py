"""A mixed order load from clients that retry, and the audit after it: lost, duplicated, oversold.

Each logical order is one customer (a user id of its own, so a duplicate shows as a second row
for that user, and a token of its own from the development issuer whose subject is that user
and which has no scope, as `shop token --user N` prints) sent on one path (sync, Kafka,
RabbitMQ, in turn) with one Idempotency-Key. A client retries an attempt answered 5xx, refused
at the door or cut (connection error, timeout) with the same key, backing off, until the order
is answered 201/202 (accepted) or 409 (no stock) or its deadline passes (abandoned). Every
attempt is recorded with its time, so what a fault cost can be read off afterwards
(`Attempts.window`).

Used by the fault test (`tests/cluster/test_faults.py`), and by hand against any running system:
    .venv/bin/python -m bench.mixed --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.customers import TOKEN_TTL_SECONDS
from bench.loadgen import catalogue_headers
from bench.run import query
from devstack.settings import StackSettings, load_stack_settings
from shop.access.dev_issuer import dev_token

PATHS = ("sync", "kafka", "rabbitmq")
ACCEPTED = {"sync": 201, "kafka": 202, "rabbitmq": 202}


@dataclass
class Attempt:
    at: float  # seconds since the load started
    path: str
    outcome: str  # "accepted", "no_stock", "5xx", "refused" (cut or not connected), "other"
    status: int  # HTTP status, 0 when no answer came


@dataclass
class Tally:
    """What the clients saw: every attempt, and every logical order's end."""

    started: float = field(default_factory=time.monotonic)
    attempts: list[Attempt] = field(default_factory=list)
    accepted: dict[str, tuple[int, str]] = field(default_factory=dict)  # id -> (user, path)
    no_stock: int = 0
    abandoned: int = 0
    other: list[tuple[int, str]] = field(default_factory=list)  # unexpected 4xx answers

    def now(self) -> float:
        return time.monotonic() - self.started

    def failed(self, since: float = 0.0, until: float = float("inf")) -> list[Attempt]:
        return [
            a for a in self.attempts if since <= a.at < until and a.outcome in ("5xx", "refused")
        ]

    def window(self, since: float, until: float) -> dict[str, Any]:
        """Attempts in [since, until): how many, how many failed, and when the last one failed
        (seconds after `since`: the time the fault cost the clients)."""
        inside = [a for a in self.attempts if since <= a.at < until]
        failed = self.failed(since, until)
        return {
            "attempts": len(inside),
            "failed": len(failed),
            "failed_by": dict(collections.Counter(f"{a.path} {a.status}" for a in failed)),
            "failed_share": round(len(failed) / len(inside), 4) if inside else 0.0,
            "last_failure_after_s": round(max(a.at for a in failed) - since, 2) if failed else 0.0,
        }

    def summary(self) -> dict[str, Any]:
        total = len(self.attempts)
        failed = len(self.failed())
        return {
            "orders_accepted": len(self.accepted),
            "orders_no_stock": self.no_stock,
            "orders_abandoned": self.abandoned,
            "unexpected_answers": len(self.other),
            "attempts": total,
            "attempts_failed": failed,
            "failed_share": round(failed / total, 4) if total else 0.0,
        }


class MixedLoad:
    """`clients` concurrent customers placing orders on every path until `stop()`."""

    def __init__(
        self,
        settings: StackSettings,
        *,
        orders_url: str,
        products: tuple[int, int],
        clients: int = 12,
        order_deadline: float = 120.0,
        attempt_timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.orders_url = orders_url.rstrip("/")
        self.scarce, self.plenty = products  # a product that runs out, one that does not
        self.clients = clients
        self.order_deadline = order_deadline
        self.attempt_timeout = attempt_timeout
        self.tally = Tally()
        # Users of this run alone: above any id the other tests and the bench use.
        self.first_user = 2_000_000_000 + random.randrange(1_000_000_000)
        self._next = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def users(self) -> range:
        return range(self.first_user, self.first_user + self._next)

    async def run(self) -> Tally:
        limits = httpx.Limits(max_connections=self.clients, max_keepalive_connections=self.clients)
        timeout = httpx.Timeout(self.attempt_timeout)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            await asyncio.gather(*(self._client(client) for _ in range(self.clients)))
        return self.tally

    async def _client(self, client: httpx.AsyncClient) -> None:
        while not self._stopping.is_set():
            number = self._next
            self._next += 1
            await self._order(client, number)

    async def _order(self, client: httpx.AsyncClient, number: int) -> None:
        path = PATHS[number % len(PATHS)]
        url = f"{self.orders_url}/orders/" + ("sync" if path == "sync" else f"async/{path}")
        body = {
            "user_id": self.first_user + number,
            "product_id": self.scarce if number % 2 else self.plenty,
            "quantity": 1 + number % 3,
        }
        headers = {
            "Authorization": f"Bearer {self._token(int(body['user_id']))}",
            "Idempotency-Key": uuid.uuid4().hex,
        }
        deadline = time.monotonic() + self.order_deadline
        pause = 0.1
        while True:
            status, answer = await self._attempt(client, url, body, headers)
            outcome = _outcome(path, status)
            self.tally.attempts.append(Attempt(self.tally.now(), path, outcome, status))
            if outcome == "accepted":
                self.tally.accepted[str(answer["id"])] = (int(body["user_id"]), path)
                return
            if outcome == "no_stock":
                self.tally.no_stock += 1
                return
            if outcome == "other":
                self.tally.other.append((status, json.dumps(answer)[:200]))
                return
            if time.monotonic() + pause > deadline:
                self.tally.abandoned += 1
                return
            await asyncio.sleep(pause)
            pause = min(2.0, pause * 2)

    def _token(self, user: int) -> str:
        """The customer's own token: subject `user`, no scope (about 0.2 ms to sign)."""
        return dev_token(self.settings, subject=str(user), scopes=[], ttl_seconds=TOKEN_TTL_SECONDS)

    async def _attempt(
        self, client: httpx.AsyncClient, url: str, body: dict[str, int], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        try:
            response = await client.post(url, json=body, headers=headers)
        except httpx.HTTPError:
            return 0, {}
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        return response.status_code, answer if isinstance(answer, dict) else {}


def _outcome(path: str, status: int) -> str:
    if status == ACCEPTED[path]:
        return "accepted"
    if status == 409:
        return "no_stock"
    if status == 0:
        return "refused"
    if status >= 500:
        return "5xx"
    return "other"


def make_products(settings: StackSettings, products_url: str, scarce_stock: int) -> tuple[int, int]:
    """A product with `scarce_stock` units (it runs out) and one with plenty."""
    headers = catalogue_headers(settings)
    ids = []
    with httpx.Client(timeout=10) as client:
        for stock in (scarce_stock, 100_000_000):
            response = client.post(
                f"{products_url.rstrip('/')}/products",
                json={"name": f"mixed-{uuid.uuid4().hex[:8]}", "price": 2.5, "stock": stock},
                headers=headers,
            )
            response.raise_for_status()
            ids.append(int(response.json()["id"]))
    return ids[0], ids[1]


async def start(
    settings: StackSettings, *, clients: int, scarce_stock: int
) -> tuple[MixedLoad, asyncio.Task[Tally]]:
    """Make the load's two products through the product service, then start the clients on
    the order service (both at the settings' service ports)."""
    products_url = f"http://127.0.0.1:{settings.http.product_port}"
    products = await asyncio.to_thread(make_products, settings, products_url, scarce_stock)
    load = MixedLoad(
        settings,
        orders_url=f"http://127.0.0.1:{settings.http.order_port}",
        products=products,
        clients=clients,
    )
    return load, asyncio.create_task(load.run())


def _stored(settings: StackSettings, users: range) -> list[tuple[str, int, int, str, int]]:
    rows = query(
        settings,
        "SELECT id, user_id, product_id, status, quantity FROM orders "
        "WHERE user_id >= %s AND user_id < %s",
        (users.start, users.stop),
    )
    return [(str(uuid.UUID(bytes=r[0])), int(r[1]), int(r[2]), str(r[3]), int(r[4])) for r in rows]


def _aliases(settings: StackSettings, users: range) -> set[str]:
    """The ids async retries were answered under that name an order of these users (an intake
    that could not claim the key at once gives a new id; the consumer joins the two)."""
    rows = query(
        settings,
        "SELECT a.id FROM order_aliases a JOIN orders o ON o.id = a.order_id "
        "WHERE o.user_id >= %s AND o.user_id < %s",
        (users.start, users.stop),
    )
    return {str(uuid.UUID(bytes=r[0])) for r in rows}


def audit(
    settings: StackSettings,
    load: MixedLoad,
    *,
    scarce_stock: int,
    timeout: float = 180.0,
) -> dict[str, Any]:
    """Wait until every accepted order is stored (or `timeout`), then count what went wrong.

    lost: accepted (201/202) but no order answers to its id (an order's own id, or an alias
    of it: `GET /orders/{id}` finds both); `lost_orders` names them. duplicated: a customer
    (one logical order) with more than one stored order. oversold: units confirmed beyond the
    scarce product's stock, or stock that does not add up (initial = left + confirmed)."""
    accepted = load.tally.accepted
    deadline = time.monotonic() + timeout
    waited = time.monotonic()
    while True:
        rows = _stored(settings, load.users)
        stored_ids = {r[0] for r in rows}
        unstored = accepted.keys() - stored_ids
        aliased_ids = unstored & _aliases(settings, load.users) if unstored else set()
        missing = unstored - aliased_ids
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    per_user: dict[int, int] = {}
    for _, user, _, _, _ in rows:
        per_user[user] = per_user.get(user, 0) + 1
    confirmed = sum(q for (_, _, p, s, q) in rows if p == load.scarce and s == "confirmed")
    left_rows = query(settings, "SELECT stock FROM products WHERE id = %s", (load.scarce,))
    left = int(left_rows[0][0]) if left_rows and left_rows[0][0] is not None else 0
    return {
        "stored": len(rows),
        "lost": len(missing),
        "lost_orders": [
            {"id": i, "user_id": accepted[i][0], "path": accepted[i][1]} for i in sorted(missing)
        ],
        "found_by_alias": len(aliased_ids),
        "duplicated": sum(n - 1 for n in per_user.values() if n > 1),
        "oversold": max(0, confirmed - scarce_stock) + abs(scarce_stock - (left + confirmed)),
        "scarce": {"initial": scarce_stock, "confirmed_units": confirmed, "left": left},
        "seconds_to_store_all": round(time.monotonic() - waited, 1),
    }


async def _main(seconds: float, clients: int, scarce_stock: int) -> int:
    settings = load_stack_settings()
    load, running = await start(settings, clients=clients, scarce_stock=scarce_stock)
    await asyncio.sleep(seconds)
    load.stop()
    tally = await running
    result = {
        "load": tally.summary(),
        "audit": await asyncio.to_thread(audit, settings, load, scarce_stock=scarce_stock),
    }
    print(json.dumps(result, indent=2))
    found = result["audit"]
    return 0 if not (found["lost"] or found["duplicated"] or found["oversold"]) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--scarce-stock", type=int, default=500)
    args = parser.parse_args()
    sys.exit(asyncio.run(_main(args.seconds, args.clients, args.scarce_stock)))
