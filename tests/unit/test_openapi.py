"""The OpenAPI documents say who may call what, and `/docs` needs nothing from the internet.

The apps are built as the services build them (`app_factory.new_app`, the health router, the product
and order routers), over the in-memory fakes of the lean-route tests.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from shop.orders import api as order_api
from shop.products import api as product_api
from shop.settings import Http
from shop.web import app_factory, health
from shop.web import docs_pages as docs
from tests.support import PageReferences
from tests.tokens import Issuer
from tests.unit.test_lean import (
    CLIENTS,
    FakeOrders,
    order_limits,
    products_in_memory,
    search_limits,
)

ISSUER = Issuer()
METHODS = {"get", "put", "post", "delete", "patch"}


def _service(kind: str) -> FastAPI:
    app = app_factory.new_app(
        f"{kind} test", service=f"{kind}-test", http=Http(max_body_bytes=4096)
    )
    app.include_router(health.health_router(lambda: {}, timeout=1.0))
    auth = ISSUER.authenticator()
    if kind == "products":
        products = products_in_memory()
        app.include_router(product_api.router(products, auth, search_limits(), CLIENTS))
    else:
        app.include_router(order_api.router(FakeOrders(), auth, order_limits()))
    return app


def _operations(app: FastAPI) -> dict[tuple[str, str], Any]:
    """(method, path) -> the operation's `security`, or None where it declares none."""
    return {
        (method.upper(), path): operation.get("security")
        for path, item in app.openapi()["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


@pytest.mark.parametrize("kind", ["products", "orders"])
def test_documents_declare_the_bearer_scheme(kind: str) -> None:
    schemes = _service(kind).openapi()["components"]["securitySchemes"]
    assert list(schemes) == ["HTTPBearer"]
    assert schemes["HTTPBearer"]["type"] == "http"
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert schemes["HTTPBearer"]["bearerFormat"] == "JWT"


def test_product_writes_need_the_write_scope_and_reads_are_public() -> None:
    operations = _operations(_service("products"))
    write = [{"HTTPBearer": [product_api.WRITE]}]
    assert operations == {
        ("GET", "/healthz"): None,
        ("GET", "/readyz"): None,
        ("GET", "/metrics"): None,
        ("GET", "/products"): None,
        ("POST", "/products"): write,
        ("GET", "/products/{product_id}"): None,
        ("PUT", "/products/{product_id}"): write,
        ("PATCH", "/products/{product_id}"): write,
        ("DELETE", "/products/{product_id}"): write,
    }


def test_every_order_operation_needs_a_token_and_no_particular_scope() -> None:
    operations = _operations(_service("orders"))
    assert {key for key in operations if key[1].startswith("/orders")} == {
        ("GET", "/orders"),
        ("GET", "/orders/{order_id}"),
        ("POST", "/orders/sync"),
        ("POST", "/orders/async/kafka"),
        ("POST", "/orders/async/rabbitmq"),
        ("POST", "/orders/{order_id}/cancel"),
    }
    for (method, path), security in operations.items():
        expected: list[dict[str, list[str]]] | None = (
            [{"HTTPBearer": []}] if path.startswith("/orders") else None
        )
        assert security == expected, f"{method} {path}"


def _page_urls(html: str) -> list[str]:
    parser = PageReferences()
    parser.feed(html)
    spec = re.search(r"url: '([^']*)'", html)  # Swagger UI's document, set in its script
    return parser.urls + ([spec.group(1)] if spec else [])


async def _get(app: FastAPI, path: str, *, root_path: str = "") -> httpx.Response:
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        return await client.get(root_path + path)


@pytest.mark.parametrize("page", [docs.DOCS, docs.REDOC])
async def test_docs_pages_load_only_assets_of_the_service(page: str) -> None:
    app = _service("products")
    response = await _get(app, page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "http://" not in response.text
    assert "https://" not in response.text
    urls = _page_urls(response.text)
    assert "/openapi.json" in urls
    assets = [url for url in urls if url != "/openapi.json"]
    assert assets
    assert all(url.startswith(docs.ASSETS + "/") for url in assets), urls
    for url in assets:
        asset = await _get(app, url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url


async def test_docs_pages_follow_the_root_path() -> None:
    response = await _get(_service("orders"), docs.DOCS, root_path="/shop")
    assert response.status_code == 200
    urls = _page_urls(response.text)
    assert "/shop/openapi.json" in urls
    assert f"/shop{docs.ASSETS}/swagger-ui-bundle.js" in urls


def test_docs_pages_are_not_operations() -> None:
    paths = _service("products").openapi()["paths"]
    assert not [p for p in paths if p.startswith((docs.DOCS, docs.REDOC))]


def test_install_refuses_an_app_with_fastapis_own_docs() -> None:
    with pytest.raises(ValueError, match="docs_url=None"):
        docs.install(FastAPI())
