"""The limits of issue 22 against the real services: a customer's order limit holds across the
workers of a service, the units cap answers 429 and changes nothing on every path, and a flood
of searches that match nothing leaves reads by id answering.

Each test starts the service it needs with the settings it tests (small limits, WORKERS=2),
on the run's database, topics and queue; the search test on a database of its own, filled with
a catalogue large enough that a full scan is costly.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devstack.settings import StackSettings
from shop import jsonutil
from shop.products.tables import products as products_table
from tests.conftest import TEST_ENV, TOKENS, migrate
from tests.e2e.orders_support import (
    new_product,
    order_url,
    stock_of,
    stored_orders,
    wait_until_stored,
)
from tests.support import ServiceProcess, free_port

pytestmark = pytest.mark.e2e

# The order service under test: two workers, and limits small enough to meet quickly. The rate
# is low so that the burst is nearly all a customer gets in the test: a bucket per worker would
# admit up to twice it (20 of 120 with the table bypassed, against at most 12).
RATE, BURST = 0.1, 10
MAX_QUANTITY, UNITS_BURST, UNITS_PER_MINUTE = 50, 100, 60.0
ADMIN = ["orders:admin"]
# Two workers each import the whole service: on a busy machine that took 29 s.
STARTUP_SECONDS = 90.0


def _user() -> int:
    return 3_000_000 + uuid.uuid4().int % 1_000_000_000


@pytest.fixture(scope="module")
async def limited_orders(
    database: AsyncEngine,
    kafka_topics: None,
    rabbitmq_cleanup: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ServiceProcess]:
    port = free_port()
    env = {
        **TEST_ENV,
        "ORDER_SERVICE_PORT": str(port),
        "WORKERS": "2",
        "ORDER_RATE_PER_SECOND": str(RATE),
        "ORDER_BURST": str(BURST),
        "MAX_ORDER_QUANTITY": str(MAX_QUANTITY),
        "CUSTOMER_UNITS_BURST": str(UNITS_BURST),
        "CUSTOMER_UNITS_PER_MINUTE": str(UNITS_PER_MINUTE),
    }
    log = Path(tmp_path_factory.mktemp("limits")) / "orders.log"
    service = ServiceProcess("orders", port=port, env=env, log_path=log)
    await service.start(timeout=STARTUP_SECONDS)
    yield service
    assert service.stop(timeout=20), f"see {log}"


async def _order_once(url: str, body: dict[str, int], headers: dict[str, str]) -> int:
    """One order on a connection of its own, so the kernel hands it to either worker."""
    async with httpx.AsyncClient(timeout=30) as client:
        return (await client.post(url, json=body, headers=headers)).status_code


async def test_a_customers_order_limit_holds_across_workers(
    limited_orders: ServiceProcess, products: httpx.AsyncClient, database: AsyncEngine
) -> None:
    """One customer orders from 16 connections at a time, each request on a new connection:
    with a bucket per worker the two workers would admit up to twice the burst and the rate.
    It fails with the shared table bypassed (`order_limits` with no file: 20 accepted in 12 s,
    against at most 12.2)."""
    pid = await new_product(products, stock=None)
    customer = _user()
    headers = TOKENS.bearer(customer)
    body = {"user_id": customer, "product_id": pid, "quantity": 1}
    url = f"{limited_orders.url}/orders/sync"
    lanes = asyncio.Semaphore(16)

    async def one() -> int:
        async with lanes:
            return await _order_once(url, body, headers)

    started = time.monotonic()
    statuses = await asyncio.gather(*(one() for _ in range(120)))
    elapsed = time.monotonic() - started
    accepted = statuses.count(201)
    assert set(statuses) <= {201, 429}, statuses
    assert BURST <= accepted <= BURST + RATE * elapsed + 1, (accepted, elapsed)
    assert len(await stored_orders(database, pid)) == accepted
    most = BURST + RATE * elapsed
    print(
        f"\n120 orders, 16 connections, {elapsed:.2f} s: {accepted} accepted (at most {most:.1f})"
    )


@pytest.mark.parametrize("path", ["sync", "kafka", "rabbitmq"])
async def test_the_units_cap_answers_429_and_changes_nothing(
    path: str,
    limited_orders: ServiceProcess,
    products: httpx.AsyncClient,
    database: AsyncEngine,
) -> None:
    pid = await new_product(products, stock=1000)
    customer = _user()
    url = limited_orders.url + order_url(path)
    accepted: set[str] = set()
    async with httpx.AsyncClient(timeout=30) as client:

        async def order(quantity: int, headers: dict[str, str]) -> httpx.Response:
            body = {"user_id": customer, "product_id": pid, "quantity": quantity}
            return await client.post(url, json=body, headers=headers)

        for _ in range(2):  # 80 of the 100 units
            answer = await order(40, TOKENS.bearer(customer))
            assert answer.status_code in (201, 202), answer.text
            accepted.add(answer.json()["id"])
        refused = await order(40, TOKENS.bearer(customer))
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert (problem["limit"], problem["status"]) == ("units", 429)
        # 20 more units refill at 1 a second.
        assert 15 <= int(refused.headers["retry-after"]) <= 21
        # An order of an administrator (unlimited) after it, on the same path: once it is
        # stored, whatever the refused request might have put before it would be too.
        barrier = await order(5, TOKENS.bearer("support-desk", ADMIN))
        assert barrier.status_code in (201, 202), barrier.text
    stored = await wait_until_stored(database, pid, accepted | {barrier.json()["id"]})
    assert {o["id"] for o in stored} == accepted | {barrier.json()["id"]}
    assert await stock_of(database, pid) == 1000 - 80 - 5


# --- Searches ----------------------------------------------------------------------------------

CATALOGUE = 60_000
SEARCHES = 200
READERS = 4  # clients reading a product by id, one request after another, during the flood
WORDS = ["oak", "steel", "linen", "copper", "walnut", "glass", "wool", "cedar", "brass", "slate"]
THINGS = ["chair", "table", "lamp", "shelf", "stool", "desk", "bench", "mirror", "rug", "clock"]


@pytest.fixture(scope="module")
async def big_catalogue(
    settings: StackSettings, database: AsyncEngine
) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """A database of its own holding CATALOGUE products; dropped at the end."""
    name = f"{settings.db.name}_search"
    await asyncio.to_thread(migrate, {**TEST_ENV, "DB_NAME": name})
    engine = create_async_engine(
        settings.replace(db_name=name).db.migration_url,
        connect_args=settings.db.connect_args(),
    )
    try:
        await _fill(engine)
        yield name, engine
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await engine.dispose()


async def _fill(engine: AsyncEngine) -> None:
    rng = random.Random(22)
    made = jsonutil.utcnow()
    async with engine.begin() as conn:
        for first in range(0, CATALOGUE, 5000):
            rows = [
                {
                    "name": f"{rng.choice(WORDS)} {rng.choice(THINGS)} {n:06d}",
                    "description": "",
                    "price": Decimal(rng.randint(100, 99_999)) / 100,
                    "stock": None,
                    "created_at": made,
                    "updated_at": made,
                }
                for n in range(first, first + 5000)
            ]
            await conn.execute(insert(products_table), rows)


@pytest.fixture(scope="module")
async def search_service(
    big_catalogue: tuple[str, AsyncEngine],
    kafka_topics: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ServiceProcess]:
    port = free_port()
    env = {
        **TEST_ENV,
        "DB_NAME": big_catalogue[0],
        "PRODUCT_SERVICE_PORT": str(port),
        "WORKERS": "2",
    }
    log = Path(tmp_path_factory.mktemp("search")) / "products.log"
    service = ServiceProcess("products", port=port, env=env, log_path=log)
    await service.start(timeout=STARTUP_SECONDS)
    yield service
    assert service.stop(timeout=20), f"see {log}"


async def _timed(client: httpx.AsyncClient, url: str, **headers: str) -> tuple[int, float]:
    started = time.perf_counter()
    answer = await client.get(url, headers=headers)
    return answer.status_code, time.perf_counter() - started


def _ms(timed: list[tuple[int, float]], share: float) -> float:
    """The `share` quantile of the answers' times, in milliseconds."""
    seconds = [s for _, s in timed]
    if len(seconds) < 2:
        return 1000 * seconds[0]
    return 1000 * statistics.quantiles(seconds, n=100)[int(share * 100) - 1]


async def test_unmatched_searches_leave_reads_by_id_answering(
    search_service: ServiceProcess, big_catalogue: tuple[str, AsyncEngine]
) -> None:
    """200 searches that match nothing, at once, each from a client address of its own (as a
    distributed flood would come, so no per-client limit stops them): every read by id made
    meanwhile answers 200. The figures go to docs/security.md.

    It can fail: with the catalogue read as before issue 22 (the `LIKE` scan, no time limit,
    no places for searches), reads by id answered 503 (p50 0.5 s, max 10 s) and 33 searches
    of the 200 answered 200; with only the time limit kept, 15 searches did."""
    _, engine = big_catalogue
    async with engine.connect() as conn:
        some_id = int(await conn.scalar(select(func.min(products_table.c.id))) or 0)
        # What one unmatched search cost before: the LIKE scan, and now: the index.
        started = time.perf_counter()
        await conn.execute(
            text("SELECT id FROM products WHERE name LIKE '%zzqnomatch%' ORDER BY id LIMIT 101")
        )
        scan = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute(
            text(
                "SELECT id FROM products WHERE MATCH (name) AGAINST ('+zzqnomatch*' IN "
                "BOOLEAN MODE) AND name LIKE '%zzqnomatch%' ORDER BY id LIMIT 101"
            )
        )
        indexed = time.perf_counter() - started
    base = search_service.url
    # Every request on a connection of its own: on the loaded machine this test's own loop may
    # take longer than the server's KEEP_ALIVE_SECONDS to send a connection's next request, and
    # the server then closes it just as the request goes out ("Server disconnected").
    fresh = httpx.Limits(max_connections=SEARCHES, max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(base_url=base, timeout=60, limits=fresh) as client,
        httpx.AsyncClient(base_url=base, timeout=60, limits=fresh) as reads,
    ):
        assert (await reads.get(f"/products/{some_id}")).status_code == 200
        flooding = True
        by_id: list[tuple[int, float]] = []

        async def read_by_id() -> None:
            while flooding:
                by_id.append(await _timed(reads, f"/products/{some_id}"))

        readers = [asyncio.ensure_future(read_by_id()) for _ in range(READERS)]
        started = time.perf_counter()
        searches = await asyncio.gather(
            *(
                _timed(
                    client,
                    f"/products?name=zzq{uuid.uuid4().hex}",
                    **{"X-Forwarded-For": f"198.18.{n // 250}.{n % 250 + 1}"},
                )
                for n in range(SEARCHES)
            )
        )
        flood = time.perf_counter() - started
        flooding = False
        await asyncio.gather(*readers)
    # One client alone is limited: SEARCH_BURST (30) at once, then 10 a second.
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=fresh) as client:
        started = time.perf_counter()
        alone = await asyncio.gather(
            *(
                _timed(client, f"/products?name=zzq{n}x", **{"X-Forwarded-For": "198.19.0.1"})
                for n in range(60)
            )
        )
        alone_took = time.perf_counter() - started
    print(
        f"\n{CATALOGUE} products; one unmatched search: LIKE scan {scan * 1000:.1f} ms, "
        f"indexed {indexed * 1000:.1f} ms. {SEARCHES} at once: {flood * 1000:.0f} ms in all "
        f"(p50 {_ms(searches, 0.5):.0f} ms, p99 {_ms(searches, 0.99):.0f} ms), "
        f"{[status for status, _ in searches].count(200)} answered 200; meanwhile "
        f"{len(by_id)} reads by id: statuses {sorted({status for status, _ in by_id})}, "
        f"p50 {_ms(by_id, 0.5):.1f} ms, "
        f"max {1000 * max(s for _, s in by_id):.0f} ms. One client's 60 searches at once: "
        f"{[status for status, _ in alone].count(429)} answered 429."
    )
    assert len(by_id) >= READERS
    assert {status for status, _ in by_id} == {200}
    # A search may wait too long for one of its worker's places on a loaded machine (503), but
    # through the index nearly all are answered (with the old scan, 15-33 of the 200 were).
    assert {status for status, _ in searches} <= {200, 503}
    assert [status for status, _ in searches].count(200) >= SEARCHES // 2
    answered = [status for status, _ in alone]
    assert set(answered) <= {200, 429}
    assert 30 <= answered.count(200) <= 30 + 10 * alone_took + 1
