"""The limits as clients meet them: an order intake answers 429 with Retry-After and a
problem+json body naming the limit (`orders` or `units`), an order refused for its units spends
none of the customer's orders, an invalid order is 422 and spends nothing, and `orders:admin`
is not limited. Through the order routes (lean and FastAPI alike, over the services' HTTP
protocol, which serves the lean ones), over in-memory fakes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from shop.access.rate_limit import OrderLimits, TooManyRequests
from shop.orders import api as order_api
from shop.settings import Http, Orders
from shop.web import app_factory
from tests.clock import FakeClock
from tests.tokens import Issuer
from tests.unit.protocol_client import ProtocolTransport
from tests.unit.test_lean import FakeOrders

ISSUER = Issuer()
CUSTOMER = 5


def _limits(clock: FakeClock) -> OrderLimits:
    # 1 unit a second
    terms = Orders(rate_per_second=1.0, burst=3, units_per_minute=60.0, units_burst=100)
    return OrderLimits(terms, slots=1024, clock=clock)


def _app(limits: OrderLimits, *, lean: bool) -> FastAPI:
    orders, auth = FakeOrders(), ISSUER.authenticator()
    app = app_factory.new_app(
        "test",
        service="limits-test",
        http=Http(),
        lean=order_api.lean_routes(orders, auth, limits) if lean else (),
    )
    app.include_router(order_api.router(orders, auth, limits))
    return app


async def _order(
    app: FastAPI, quantity: int, *, subject: Any = CUSTOMER, **kw: Any
) -> httpx.Response:
    transport = ProtocolTransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        body = {"user_id": CUSTOMER, "product_id": 2, "quantity": quantity}
        answer = await client.post("/orders/sync", json=body, headers=ISSUER.bearer(subject, **kw))
    lean = hasattr(app.state, "lean")
    assert transport.calls == (0 if lean else 1)  # with lean routes, every answer is theirs
    return answer


@pytest.mark.parametrize("lean", [True, False])
async def test_the_units_limit_answers_429_naming_it_and_spends_no_order(lean: bool) -> None:
    clock = FakeClock()
    app = _app(_limits(clock), lean=lean)
    assert (await _order(app, 90)).status_code == 201
    refused = await _order(app, 20)  # 10 units left
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) == 10  # 10 more units at 1 a second
    problem = refused.json()
    assert (problem["type"], problem["limit"], problem["status"]) == (
        "/problems/rate-limited",
        "units",
        429,
    )
    assert "units" in problem["detail"]
    # The refused order took none of the 3 orders' burst: two more pass at once.
    assert (await _order(app, 5)).status_code == 201
    assert (await _order(app, 5)).status_code == 201
    too_fast = await _order(app, 1)
    assert (too_fast.status_code, too_fast.json()["limit"]) == (429, "orders")
    clock.now += 10
    assert (await _order(app, 5)).status_code == 201


@pytest.mark.parametrize("lean", [True, False])
async def test_an_invalid_order_is_422_and_spends_nothing(lean: bool) -> None:
    clock = FakeClock()
    app = _app(_limits(clock), lean=lean)
    too_many = FakeOrders.MAX_QUANTITY + 1
    for _ in range(5):
        refused = await _order(app, too_many)
        assert refused.status_code == 422, refused.text
    for _ in range(3):
        assert (await _order(app, 30)).status_code == 201


async def test_orders_admin_is_not_limited() -> None:
    app = _app(_limits(FakeClock()), lean=True)
    for _ in range(10):
        answer = await _order(app, 100, subject="support", scopes=["orders:admin"])
        assert answer.status_code == 201


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert TooManyRequests("x", retry_after=0.01, limit="orders").headers["Retry-After"] == "1"
    assert TooManyRequests("x", retry_after=2.2, limit="units").headers["Retry-After"] == "3"


def test_each_refusal_is_counted_by_the_limit_it_met() -> None:
    """`rate_limit_refusals_total{limit}` (deploy/prometheus/rules.yml): one per 429, none for
    an admitted request."""

    def refused(limit: str) -> float:
        return REGISTRY.get_sample_value("rate_limit_refusals_total", {"limit": limit}) or 0.0

    limits, before = _limits(FakeClock()), (refused("orders"), refused("units"))
    for _ in range(3):  # the burst
        limits.admit(CUSTOMER, 1)
    assert (refused("orders"), refused("units")) == before
    with pytest.raises(TooManyRequests):
        limits.admit(CUSTOMER, 1)
    with pytest.raises(TooManyRequests):
        limits.admit(CUSTOMER + 1, 101)  # over the units' burst
    assert (refused("orders"), refused("units")) == (before[0] + 1, before[1] + 1)
