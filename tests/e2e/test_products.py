"""The product API over real HTTP against the real MariaDB."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shop.products.tables import product_outbox
from shop.products.tables import products as products_table

pytestmark = pytest.mark.e2e


def unique(prefix: str = "item") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def create(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"name": unique(), "price": 9.99, **fields}
    response = await client.post("/products", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_created_product_reads_back_with_exact_price(products: httpx.AsyncClient) -> None:
    name = unique("mug")
    response = await products.post(
        "/products", json={"name": name, "description": "blue", "price": 19.9, "stock": 7}
    )
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    created = response.json()
    assert response.headers["location"] == f"/products/{created['id']}"
    assert '"price":19.90' in response.text
    fetched = (await products.get(f"/products/{created['id']}")).json()
    assert fetched == created
    assert fetched["name"] == name
    assert fetched["stock"] == 7
    assert fetched["description"] == "blue"
    assert fetched["created_at"].endswith("Z")


async def test_stock_defaults_to_untracked(products: httpx.AsyncClient) -> None:
    created = await create(products)
    assert created["stock"] is None
    assert created["description"] == ""


async def test_patch_changes_only_given_fields(products: httpx.AsyncClient) -> None:
    created = await create(products, stock=3, description="keep me")
    response = await products.patch(f"/products/{created['id']}", json={"price": 5})
    assert response.status_code == 200
    patched = response.json()
    assert patched["price"] == 5
    assert patched["stock"] == 3
    assert patched["description"] == "keep me"
    assert patched["updated_at"] > created["updated_at"]
    untracked = await products.patch(f"/products/{created['id']}", json={"stock": None})
    assert untracked.json()["stock"] is None


async def test_put_replaces_every_field(products: httpx.AsyncClient) -> None:
    created = await create(products, stock=3, description="old")
    name = unique("new")
    response = await products.put(f"/products/{created['id']}", json={"name": name, "price": 1})
    assert response.status_code == 200
    replaced = response.json()
    assert replaced["name"] == name
    assert replaced["description"] == ""
    assert replaced["stock"] is None


async def test_delete_removes_the_product(products: httpx.AsyncClient) -> None:
    created = await create(products)
    assert (await products.delete(f"/products/{created['id']}")).status_code == 204
    gone = await products.get(f"/products/{created['id']}")
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"
    assert (await products.delete(f"/products/{created['id']}")).status_code == 404


async def test_list_pages_through_every_product_once(products: httpx.AsyncClient) -> None:
    tag = unique("page")
    made = [await create(products, name=f"{tag}-{i}") for i in range(7)]
    seen: list[int] = []
    url: str | None = f"/products?limit=3&name={tag}"
    pages = 0
    while url is not None:
        # A Host the client made up: the next page's link is relative, never built from it.
        response = await products.get(url, headers={"Host": "evil.example:8443"})
        assert response.status_code == 200
        seen += [p["id"] for p in response.json()]
        pages += 1
        link = response.headers.get("link")
        url = link[link.index("<") + 1 : link.index(">")] if link else None
        assert url is None or url.startswith(f"/products?limit=3&name={tag}&cursor="), link
        assert pages <= 4
    assert seen == [p["id"] for p in made]
    assert pages == 3


async def test_list_filters_by_name_and_price(products: httpx.AsyncClient) -> None:
    tag = unique("filter")
    cheap = await create(products, name=f"{tag}-cheap", price=1)
    mid = await create(products, name=f"{tag}-mid", price=10)
    await create(products, name=f"{tag}-dear", price=100)
    await create(products, name=unique("other"), price=10)
    response = await products.get(f"/products?name={tag}&min_price=0.5&max_price=10.00")
    assert [p["id"] for p in response.json()] == [cheap["id"], mid["id"]]
    upside_down = await products.get(f"/products?name={tag}&min_price=10&max_price=1")
    assert (upside_down.status_code, upside_down.json()) == (200, [])
    assert "link" not in upside_down.headers
    wildcards = await products.get(f"/products?name={tag}%25_")
    assert wildcards.json() == []  # LIKE wildcards in the filter are literal
    refused = await products.get("/products?name=%25_")  # no word the index holds
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["name"]


async def test_list_default_limit_is_100_and_max_1000(products: httpx.AsyncClient) -> None:
    assert (await products.get("/products?limit=1001")).status_code == 422
    assert (await products.get("/products?limit=0")).status_code == 422
    assert len((await products.get("/products")).json()) <= 100


async def _counts(database: AsyncEngine) -> tuple[int, int]:
    async with database.connect() as conn:
        rows = await conn.scalar(select(func.count()).select_from(products_table))
        events = await conn.scalar(select(func.count()).select_from(product_outbox))
    return int(rows or 0), int(events or 0)


BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    ("price as a string", b'{"name":"x","price":"12.50"}', 422, "price"),
    ("price as a boolean", b'{"name":"x","price":true}', 422, "price"),
    ("negative price", b'{"name":"x","price":-1}', 422, "price"),
    ("three decimals", b'{"name":"x","price":1.005}', 422, "price"),
    ("price too large", b'{"name":"x","price":1e15}', 422, "price"),
    ("missing price", b'{"name":"x"}', 422, "price"),
    ("empty name", b'{"name":"","price":1}', 422, "name"),
    ("blank name", b'{"name":"   ","price":1}', 422, "name"),
    ("10 KB name", b'{"name":"' + b"n" * 10_240 + b'","price":1}', 422, "name"),
    ("name as a number", b'{"name":5,"price":1}', 422, "name"),
    ("fractional stock", b'{"name":"x","price":1,"stock":1.5}', 422, "stock"),
    ("negative stock", b'{"name":"x","price":1,"stock":-1}', 422, "stock"),
    ("stock as a string", b'{"name":"x","price":1,"stock":"3"}', 422, "stock"),
    ("unknown field", b'{"name":"x","price":1,"colour":"red"}', 422, "colour"),
    ("an array", b"[1,2]", 422, "body"),
    ("null", b"null", 422, "body"),
    ("invalid JSON", b'{"name": "x", "price": ', 400, "JSON"),
    ("empty body", b"", 422, "body"),
    ("1 MB body", b'{"name":"' + b"n" * 1_048_576 + b'","price":1}', 413, "larger"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "named"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES]
)
async def test_bad_product_bodies_are_refused_and_change_nothing(
    products: httpx.AsyncClient,
    database: AsyncEngine,
    case: str,
    body: bytes,
    status: int,
    named: str,
) -> None:
    created = await create(products)
    for method, url in (("POST", "/products"), ("PUT", f"/products/{created['id']}")):
        before = await _counts(database)
        response = await products.request(
            method, url, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == status, (case, method, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == status
        assert named in response.text
        if status == 422:
            assert any(e["field"] == named for e in problem["errors"])
        assert await _counts(database) == before, f"{case}: {method} wrote something"
    unchanged = (await products.get(f"/products/{created['id']}")).json()
    assert unchanged == created


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("GET", "/products/0", 422),
        ("GET", "/products/abc", 422),
        ("GET", "/products/99999999999", 404),
        ("PATCH", "/products/99999999999", 404),
        ("DELETE", "/products/99999999999", 404),
        ("GET", "/products?cursor=not-a-cursor", 422),
        ("GET", "/products?min_price=abc", 422),
        ("POST", "/products/1", 405),
        ("GET", "/nowhere", 404),
    ],
)
async def test_bad_urls_get_problems_not_5xx(
    products: httpx.AsyncClient, method: str, url: str, status: int
) -> None:
    kwargs: dict[str, Any] = {"json": {"price": 1}} if method == "PATCH" else {}
    response = await products.request(method, url, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status


async def test_patch_refuses_nulls_for_required_fields(products: httpx.AsyncClient) -> None:
    created = await create(products)
    response = await products.patch(f"/products/{created['id']}", json={"name": None})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "name"


async def test_form_encoded_body_is_415(products: httpx.AsyncClient) -> None:
    response = await products.post("/products", data={"name": "x", "price": "1"})
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"


async def test_idempotency_key_replays_the_first_answer(
    products: httpx.AsyncClient, database: AsyncEngine
) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"name": unique("idem"), "price": 3.5}
    first = await products.post("/products", json=body, headers=key)
    again = await products.post("/products", json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    listed = (await products.get(f"/products?name={body['name']}")).json()
    assert len(listed) == 1
    other = await products.post("/products", json={**body, "price": 4}, headers=key)
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"


async def test_racing_twins_with_one_key_create_one_product(
    products: httpx.AsyncClient,
) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"name": unique("race"), "price": 2.25}
    answers = await asyncio.gather(
        *(products.post("/products", json=body, headers=key) for _ in range(12))
    )
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["id"] for a in answers}) == 1
    assert len((await products.get(f"/products?name={body['name']}")).json()) == 1


async def test_operational_endpoints(products: httpx.AsyncClient) -> None:
    assert (await products.get("/healthz")).json() == {"status": "ok"}
    ready = await products.get("/readyz")
    assert ready.status_code == 200, ready.text
    metrics = await products.get("/metrics")
    assert "http_requests_total" in metrics.text
    assert (await products.get("/openapi.json")).json()["info"]["title"] == "Product service"
    assert (await products.get("/docs")).status_code == 200
