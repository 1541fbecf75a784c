"""Details of the HTTP answers both services share (issue 22): next-page links are relative,
a 405 says what is allowed, and `/readyz` names what fails without the exception's text."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError

from shop.access.rate_limit import OrderLimits
from shop.orders import api as order_api
from shop.products import api as product_api
from shop.settings import Http, Orders
from shop.web import app_factory, health
from shop.web.problems import next_page_link
from tests.tokens import Issuer
from tests.unit.protocol_client import ProtocolTransport
from tests.unit.test_lean import CLIENTS, FakeOrders, products_in_memory, search_limits

ISSUER = Issuer()


def _app(checks: Mapping[str, health.HealthCheck] | None = None, timeout: float = 1.0) -> FastAPI:
    """Both services' routes in one app as the services build theirs: the lean routes in
    front of the FastAPI routes, the health routes beside them."""
    orders, products, auth = FakeOrders(), products_in_memory(), ISSUER.authenticator()
    limits = _generous()
    app = app_factory.new_app(
        "test",
        service="answers-test",
        http=Http(),
        lean=[*order_api.lean_routes(orders, auth, limits), *product_api.lean_routes(products)],
    )
    app.include_router(health.health_router(lambda: checks or {}, timeout=timeout))
    app.include_router(order_api.router(orders, auth, limits))
    app.include_router(product_api.router(products, auth, search_limits(), CLIENTS))
    return app


def _generous() -> OrderLimits:
    terms = Orders(rate_per_second=1000, burst=1000, units_per_minute=10**6, units_burst=10**5)
    return OrderLimits(terms, slots=1024)


async def _send(
    app: FastAPI, method: str, url: str, *, wire: ProtocolTransport | None = None, **kwargs: Any
) -> httpx.Response:
    """The answer over the services' HTTP protocol, which serves the lean routes."""
    transport = wire or ProtocolTransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        return await client.request(method, url, **kwargs)


# --- Link: rel="next" ------------------------------------------------------------------------


def test_the_next_page_link_is_the_requests_path_and_query_with_the_cursor() -> None:
    scope = {
        "path": "/products",
        "query_string": b"limit=2&name=a%20b&cursor=old",
        "headers": [(b"host", b"evil.example:8443")],
    }
    link = next_page_link(scope, "cDI")
    assert link == {"Link": '</products?limit=2&name=a+b&cursor=cDI>; rel="next"'}
    assert next_page_link(scope, None) == {}


@pytest.mark.parametrize("host", ["shop.test", "evil.example:8443", "x/../y"])
async def test_a_list_links_its_next_page_relatively_whatever_the_host(host: str) -> None:
    app = _app()
    # The lean route (limit alone) and FastAPI's (with a name filter, it reaches the app) alike.
    for query, reaches_app in (("limit=2", 0), ("limit=2&name=chair", 1)):
        wire = ProtocolTransport(app)
        answer = await _send(app, "GET", f"/products?{query}", wire=wire, headers={"Host": host})
        assert answer.status_code == 200, answer.text
        assert wire.calls == reaches_app
        link = answer.headers["link"]
        assert link.startswith(f"</products?{query}&cursor="), link
        assert link.endswith('>; rel="next"')
        assert host not in link


# --- 405 Method Not Allowed: Allow ----------------------------------------------------------

# (method, path, what Allow lists): every method some route answers on the path, not only the
# first route's; the lean routes' paths (/orders/sync, /orders/async/*, /products) included.
NOT_ALLOWED = [
    ("DELETE", "/products", "GET, POST"),
    ("HEAD", "/products", "GET, POST"),
    ("POST", "/products/7", "DELETE, GET, PATCH, PUT"),
    ("PUT", "/orders/sync", "GET, POST"),  # GET: /orders/{order_id} takes "sync" (then 422)
    ("DELETE", "/orders/async/kafka", "POST"),
    ("PATCH", "/orders/async/rabbitmq", "POST"),
    ("POST", "/orders", "GET"),
    ("GET", "/orders/0191e0a8-0000-7000-8000-000000000000/cancel", "POST"),
    ("POST", "/readyz", "GET"),
    ("DELETE", "/openapi.json", "GET, HEAD"),
    ("POST", "/docs/assets/swagger-ui.css", "GET, HEAD"),  # the mounted StaticFiles
]


@pytest.mark.parametrize(("method", "path", "allow"), NOT_ALLOWED)
async def test_a_405_lists_every_method_the_path_answers(
    method: str, path: str, allow: str
) -> None:
    answer = await _send(_app(), method, path, json={})
    assert answer.status_code == 405, answer.text
    assert answer.headers["allow"] == allow
    assert answer.headers["content-type"] == "application/problem+json"
    if method != "HEAD":
        assert answer.json()["status"] == 405


async def test_a_path_only_a_lean_route_answers_is_405_for_another_method() -> None:
    """Without FastAPI's twin of a lean route, its path is known all the same: 405, not 404."""
    auth, limits = ISSUER.authenticator(), _generous()
    lean_only = app_factory.new_app(
        "test",
        service="answers-test",
        http=Http(),
        lean=order_api.lean_routes(FakeOrders(), auth, limits),
    )
    answer = await _send(lean_only, "GET", "/orders/async/kafka")
    assert (answer.status_code, answer.headers["allow"]) == (405, "POST")
    assert (await _send(lean_only, "GET", "/orders/async/other")).status_code == 404
    # The lean route's own method, not plain for it, still finds no route: 404 as before.
    refused = await _send(lean_only, "POST", "/orders/async/kafka", json={"quantity": 0})
    assert refused.status_code == 404
    assert "allow" not in refused.headers


async def test_a_path_no_route_answers_is_still_404_without_allow() -> None:
    answer = await _send(_app(), "DELETE", "/nowhere")
    assert answer.status_code == 404
    assert "allow" not in answer.headers


# --- /readyz --------------------------------------------------------------------------------

SECRET = "host db-7.internal:3306 user shop_admin (Access denied)"


async def _refused() -> None:
    raise OperationalError("SELECT 1", {}, Exception(1045, SECRET))


async def _slow() -> None:
    await asyncio.sleep(5)


async def _fine() -> None:
    pass


async def test_readyz_names_what_fails_and_logs_why_instead_of_answering_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = _app({"database": _refused, "kafka": _fine, "rabbitmq": _slow}, timeout=0.05)
    with caplog.at_level(logging.WARNING, logger="shop.web.health"):
        answer = await _send(app, "GET", "/readyz")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["retry-after"] == "1"
    problem = answer.json()
    assert problem["detail"] == "Unreachable: database, rabbitmq"
    assert problem["checks"] == {"database": "failed", "kafka": "ok", "rabbitmq": "timed out"}
    assert SECRET not in answer.text
    assert "OperationalError" not in answer.text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "database failed: OperationalError" in logged
    assert SECRET in logged
    assert "rabbitmq did not answer within" in logged


async def test_readyz_answers_ok_with_every_check_named() -> None:
    answer = await _send(_app({"database": _fine, "kafka": _fine}), "GET", "/readyz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "checks": {"database": "ok", "kafka": "ok"}}
