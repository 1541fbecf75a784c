"""Identity and access against the running services: every write needs a verified token, every
customer sees only their own orders, and Idempotency-Keys belong to their caller."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shop.settings import Settings
from tests.conftest import TOKENS
from tests.e2e.orders_support import new_product, order_url, wait_until_stored
from tests.support import ServiceProcess

pytestmark = pytest.mark.e2e

WRITE = ["products:write"]
ADMIN = ["orders:admin"]


@pytest.fixture
async def anonymous_products(product_service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=product_service.url, timeout=15) as client:
        yield client


@pytest.fixture
async def anonymous_orders(order_service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=order_service.url, timeout=15) as client:
        yield client


def _user() -> int:
    return 1_000_000 + uuid.uuid4().int % 1_000_000_000


def _assert_refused(answer: httpx.Response, status: int, what: str) -> None:
    assert answer.status_code == status, (what, answer.status_code, answer.text)
    assert answer.headers["content-type"] == "application/problem+json", what
    assert answer.json()["status"] == status, what
    assert answer.headers["www-authenticate"].startswith("Bearer"), what


async def _order_count(database: AsyncEngine, product_id: int) -> int:
    async with database.connect() as conn:
        found = await conn.execute(
            text("SELECT COUNT(*) FROM orders WHERE product_id = :p"), {"p": product_id}
        )
        return int(found.scalar_one())


async def test_product_writes_refuse_every_bad_token_and_a_token_without_the_scope(
    products: httpx.AsyncClient, anonymous_products: httpx.AsyncClient
) -> None:
    pid = await new_product(products, stock=5)
    before = (await products.get(f"/products/{pid}")).json()
    body = {"name": "changed", "description": "", "price": 9.5, "stock": 1}
    writes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/products", body),
        ("PUT", f"/products/{pid}", body),
        ("PATCH", f"/products/{pid}", {"price": 9.5}),
        ("DELETE", f"/products/{pid}", None),
    ]
    cases = {
        **{name: (headers, 401) for name, headers in TOKENS.refused(7, WRITE).items()},
        "valid, without products:write": (TOKENS.bearer(7, ["orders:admin"]), 403),
    }
    listed = len((await anonymous_products.get("/products?limit=1000")).json())
    for method, path, json_body in writes:
        for case, (headers, status) in cases.items():
            answer = await anonymous_products.request(
                method, path, json=json_body, headers={**headers, "Idempotency-Key": case}
            )
            _assert_refused(answer, status, f"{method} {path}: {case}")
    after = await anonymous_products.get(f"/products/{pid}")  # reading stays public
    assert after.status_code == 200
    assert after.json() == before
    assert len((await anonymous_products.get("/products?limit=1000")).json()) == listed


async def test_order_endpoints_refuse_every_bad_token_and_a_token_naming_no_customer(
    products: httpx.AsyncClient,
    orders: httpx.AsyncClient,
    anonymous_orders: httpx.AsyncClient,
    database: AsyncEngine,
) -> None:
    pid = await new_product(products, stock=50)
    user = _user()
    placed = await orders.post(
        "/orders/sync", json={"user_id": user, "product_id": pid, "quantity": 1}
    )
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    body = {"user_id": user, "product_id": pid, "quantity": 1}
    endpoints: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/orders", None),
        ("GET", f"/orders/{order_id}", None),
        ("POST", "/orders/sync", body),
        ("POST", "/orders/async/kafka", body),
        ("POST", "/orders/async/rabbitmq", body),
        ("POST", f"/orders/{order_id}/cancel", None),
    ]
    cases = {
        **{name: (headers, 401) for name, headers in TOKENS.refused(user, []).items()},
        "valid, naming no customer": (TOKENS.bearer("some-service"), 403),
    }
    for method, path, json_body in endpoints:
        for case, (headers, status) in cases.items():
            answer = await anonymous_orders.request(method, path, json=json_body, headers=headers)
            _assert_refused(answer, status, f"{method} {path}: {case}")
    assert await _order_count(database, pid) == 1
    assert (await orders.get(f"/orders/{order_id}")).json()["status"] == "confirmed"
    stock = (await products.get(f"/products/{pid}")).json()["stock"]
    assert stock == 49


async def test_customers_see_and_cancel_only_their_own_orders(
    products: httpx.AsyncClient, anonymous_orders: httpx.AsyncClient
) -> None:
    pid = await new_product(products, stock=50)
    alice, bob = _user(), _user()
    as_alice, as_bob = TOKENS.bearer(alice), TOKENS.bearer(bob)
    as_admin = TOKENS.bearer("support-desk", ADMIN)

    async def place(user: int, headers: dict[str, str], path: str = "sync") -> httpx.Response:
        url = "/orders/sync" if path == "sync" else f"/orders/async/{path}"
        body = {"user_id": user, "product_id": pid, "quantity": 1}
        return await anonymous_orders.post(url, json=body, headers=headers)

    mine = await place(alice, as_alice)
    assert mine.status_code == 201, mine.text
    alices = mine.json()["id"]
    # Bob cannot read, cancel or list Alice's order: it is as if it did not exist.
    missing = await anonymous_orders.get(f"/orders/{uuid.uuid4()}", headers=as_bob)
    assert missing.status_code == 404
    foreign = await anonymous_orders.get(f"/orders/{alices}", headers=as_bob)
    assert foreign.status_code == 404
    assert foreign.json()["detail"] == f"No order with id {alices}."
    assert (
        await anonymous_orders.post(f"/orders/{alices}/cancel", headers=as_bob)
    ).status_code == 404
    listed = await anonymous_orders.get("/orders?limit=1000", headers=as_bob)
    assert listed.status_code == 200
    assert all(o["user_id"] == bob for o in listed.json())
    peek = await anonymous_orders.get(f"/orders?user_id={alice}", headers=as_bob)
    assert peek.status_code == 403
    # Nor place orders in her name, on any path.
    for path in ("sync", "kafka", "rabbitmq"):
        claimed = await place(alice, as_bob, path)
        assert claimed.status_code == 403, (path, claimed.text)
    # Alice sees her order; only hers are listed.
    assert (await anonymous_orders.get(f"/orders/{alices}", headers=as_alice)).status_code == 200
    own = (await anonymous_orders.get("/orders?limit=1000", headers=as_alice)).json()
    assert [o["id"] for o in own] == [alices]
    # orders:admin reads, filters, places for and cancels anyone's orders.
    assert (await anonymous_orders.get(f"/orders/{alices}", headers=as_admin)).status_code == 200
    filtered = await anonymous_orders.get(f"/orders?user_id={alice}", headers=as_admin)
    assert [o["id"] for o in filtered.json()] == [alices]
    assert (await place(bob, as_admin)).status_code == 201
    cancelled = await anonymous_orders.post(f"/orders/{alices}/cancel", headers=as_admin)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    # Alice may cancel her own.
    second = (await place(alice, as_alice)).json()["id"]
    again = await anonymous_orders.post(f"/orders/{second}/cancel", headers=as_alice)
    assert again.status_code == 200


async def test_idempotency_keys_belong_to_their_caller(
    products: httpx.AsyncClient,
    anonymous_products: httpx.AsyncClient,
    anonymous_orders: httpx.AsyncClient,
) -> None:
    key = f"shared-{uuid.uuid4().hex[:8]}"

    async def created_and_replayed(
        client: httpx.AsyncClient, url: str, body: dict[str, Any], token: dict[str, str]
    ) -> Any:
        """The id a keyed request created, after checking that its retry names the same."""
        headers = {**token, "Idempotency-Key": key}
        first = await client.post(url, json=body, headers=headers)
        retry = await client.post(url, json=body, headers=headers)
        assert first.status_code == retry.status_code == 201, first.text
        assert first.json()["id"] == retry.json()["id"]
        return first.json()["id"]

    made = [
        await created_and_replayed(
            anonymous_products,
            "/products",
            {"name": "same", "price": 3, "stock": 10},
            TOKENS.bearer(writer, WRITE),
        )
        for writer in ("catalogue-a", "catalogue-b")
    ]
    assert made[0] != made[1], "two callers' keys must not collide"

    pid = await new_product(products, stock=50)
    placed = [
        await created_and_replayed(
            anonymous_orders,
            "/orders/sync",
            {"user_id": user, "product_id": pid, "quantity": 1},
            TOKENS.bearer(user),
        )
        for user in (_user(), _user())
    ]
    assert placed[0] != placed[1], "two customers' keys must not collide"


@pytest.mark.parametrize("path", ["sync", "kafka", "rabbitmq"])
async def test_an_admin_ordering_for_a_customer_never_shares_the_customers_key(
    products: httpx.AsyncClient,
    anonymous_orders: httpx.AsyncClient,
    database: AsyncEngine,
    path: str,
) -> None:
    """A key is the caller's (the token's subject) for the order's user: customer 5 and an
    admin ordering for customer 5 under one key place two orders; each of them gets their own
    order again for the same body, and 422 for another."""
    pid = await new_product(products, stock=None)
    customer = _user()
    key = f"same-key-{uuid.uuid4().hex[:8]}"
    url = order_url(path)
    body = {"user_id": customer, "product_id": pid, "quantity": 1}
    callers = {"customer": TOKENS.bearer(customer), "admin": TOKENS.bearer("help-desk", ADMIN)}
    placed = {}
    for who, token in callers.items():
        headers = {**token, "Idempotency-Key": key}
        first = await anonymous_orders.post(url, json=body, headers=headers)
        retry = await anonymous_orders.post(url, json=body, headers=headers)
        assert first.status_code == retry.status_code == (201 if path == "sync" else 202), (
            who,
            first.text,
        )
        assert first.json()["id"] == retry.json()["id"], who
        assert first.json()["user_id"] == customer
        other = await anonymous_orders.post(url, json={**body, "quantity": 2}, headers=headers)
        assert other.status_code == 422, (who, other.text)
        placed[who] = first.json()["id"]
    assert placed["customer"] != placed["admin"], "an admin's key met the customer's"
    stored = await wait_until_stored(database, pid, set(placed.values()), timeout=30)
    assert sorted(o["id"] for o in stored) == sorted(placed.values())


async def test_health_and_metrics_stay_open(anonymous_orders: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await anonymous_orders.get(path)).status_code == 200, path


async def test_a_customer_placing_too_fast_gets_429_with_retry_after_and_admins_do_not(
    products: httpx.AsyncClient,
    anonymous_orders: httpx.AsyncClient,
    settings: Settings,
    database: AsyncEngine,
) -> None:
    pid = await new_product(products, stock=None)
    customer = _user()
    as_customer = TOKENS.bearer(customer)
    body = {"user_id": customer, "product_id": pid, "quantity": 1}
    placed, started = 0, time.monotonic()
    for _ in range(settings.orders.burst * 10):  # one connection: one worker, one bucket
        answer = await anonymous_orders.post("/orders/sync", json=body, headers=as_customer)
        if answer.status_code == 429:
            assert answer.headers["content-type"] == "application/problem+json"
            assert int(answer.headers["retry-after"]) >= 1
            break
        assert answer.status_code == 201, answer.text
        placed += 1
    else:
        raise AssertionError(f"{placed} orders in a row and no 429")
    elapsed = time.monotonic() - started
    assert (
        settings.orders.burst
        <= placed
        <= settings.orders.burst + settings.orders.rate_per_second * elapsed + 1
    )
    assert await _order_count(database, pid) == placed
    as_admin = TOKENS.bearer("support-desk", ADMIN)
    for _ in range(settings.orders.burst * 2):
        answer = await anonymous_orders.post("/orders/sync", json=body, headers=as_admin)
        assert answer.status_code == 201


NO_SUCH_PRODUCT = f"/products/{2**62}"  # a valid token gets 404 here, a refused one 401


async def test_an_id_token_gets_401_where_an_access_token_with_its_claims_gets_through(
    anonymous_products: httpx.AsyncClient, anonymous_orders: httpx.AsyncClient
) -> None:
    user = _user()
    id_token = TOKENS.id_token(user, scope="products:write")
    as_id_token = {"Authorization": f"Bearer {id_token}"}
    refused = await anonymous_products.delete(NO_SUCH_PRODUCT, headers=as_id_token)
    _assert_refused(refused, 401, "an ID token writing products")
    assert "at+jwt" in refused.json()["detail"]
    listed = await anonymous_orders.get("/orders", headers=as_id_token)
    _assert_refused(listed, 401, "an ID token listing orders")
    # The same claims in an access token (typ at+jwt) are accepted.
    claims = {"nonce": "n-0S6_WzA2Mj", "azp": "shop-web", "scope": "products:write"}
    as_access_token = TOKENS.bearer(user, **claims)
    assert (
        await anonymous_products.delete(NO_SUCH_PRODUCT, headers=as_access_token)
    ).status_code == 404
    assert (await anonymous_orders.get("/orders", headers=as_access_token)).status_code == 200


async def test_007_is_refused_and_never_the_customer_7(
    products: httpx.AsyncClient, anonymous_orders: httpx.AsyncClient
) -> None:
    pid = await new_product(products, stock=10)
    user = _user()
    canonical, padded = TOKENS.bearer(user), TOKENS.bearer(f"00{user}")
    body = {"user_id": user, "product_id": pid, "quantity": 1}
    placed = await anonymous_orders.post("/orders/sync", json=body, headers=canonical)
    assert placed.status_code == 201, placed.text
    for method, path, json_body in [
        ("GET", "/orders", None),
        ("GET", f"/orders/{placed.json()['id']}", None),
        ("POST", "/orders/sync", body),
        ("POST", f"/orders/{placed.json()['id']}/cancel", None),
    ]:
        answer = await anonymous_orders.request(method, path, json=json_body, headers=padded)
        _assert_refused(answer, 401, f"{method} {path} as 00{user}")
    own = await anonymous_orders.get("/orders", headers=canonical)
    assert [o["id"] for o in own.json()] == [placed.json()["id"]]


async def test_the_admin_role_acts_on_every_order_like_orders_admin(
    products: httpx.AsyncClient, anonymous_orders: httpx.AsyncClient
) -> None:
    pid = await new_product(products, stock=10)
    customer = _user()
    placed = await anonymous_orders.post(
        "/orders/sync",
        json={"user_id": customer, "product_id": pid, "quantity": 1},
        headers=TOKENS.bearer(customer),
    )
    order_id = placed.json()["id"]
    # AUTH_ADMIN_CLAIM=realm_access.roles (tests/conftest.py), AUTH_ADMIN_ROLE's default.
    support = TOKENS.bearer("support-desk", realm_access={"roles": ["shop-admin"]})
    other_role = TOKENS.bearer(_user(), realm_access={"roles": ["shop-viewer"]})
    assert (await anonymous_orders.get(f"/orders/{order_id}", headers=support)).status_code == 200
    assert (
        await anonymous_orders.get(f"/orders/{order_id}", headers=other_role)
    ).status_code == 404
    mine = await anonymous_orders.get(f"/orders?user_id={customer}", headers=support)
    assert [o["id"] for o in mine.json()] == [order_id]
    cancelled = await anonymous_orders.post(f"/orders/{order_id}/cancel", headers=support)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
