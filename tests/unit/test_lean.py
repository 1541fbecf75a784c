"""The lean routes keep the API's contract: the same requests get the same answers.

Each generated request goes over the services' HTTP protocol (where the lean routes are served,
`fastpath.protocol`) to an app with the lean routes and to one without them (FastAPI alone),
both over the same in-memory fakes of the services; status, headers and body must be
identical, for plain requests and for every kind of refusal.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import OperationalError

from shop.access.client_address import Clients
from shop.access.rate_limit import OrderLimits, SearchLimits
from shop.errors import IdempotencyMismatch, OutOfStock, Unavailable
from shop.fields import CENT
from shop.orders import api as order_api
from shop.orders import domain
from shop.orders.domain import AsyncChannel
from shop.orders.models import Accepted, PlaceOrder
from shop.orders.service import OrderQuery, OrderService
from shop.products import api as product_api
from shop.products.domain import ProductView, Versioned, encode_cursor
from shop.products.service import ProductService
from shop.settings import Http, Orders, Products
from shop.web import app_factory, middleware
from tests.clock import FakeClock
from tests.tokens import Issuer
from tests.unit.fake_product_store import FakeProductStore
from tests.unit.fakes import FakeOrderStore, fake_prices
from tests.unit.protocol_client import ProtocolTransport

ISSUER = Issuer()

MAX_BODY = 2048


class FakeOrders(OrderService):
    """Answers by the quantity: some quantities stand for each way a placement fails. Its
    `check_order` is the service's own, with MAX_ORDER_QUANTITY at 590."""

    MAX_QUANTITY = 590

    def __init__(self) -> None:
        store = FakeOrderStore()
        super().__init__(
            store,
            prices=fake_prices(store),
            publishers={},
            on_event=lambda: None,
            settings=Orders(max_quantity=self.MAX_QUANTITY),
        )

    def _decide(
        self, order: PlaceOrder, channel: AsyncChannel | None, caller: str, key: str | None
    ) -> Accepted:
        failures: dict[int, Exception] = {
            13: OperationalError("INSERT", {}, Exception("gone away")),
            14: Unavailable("Kafka did not confirm the order in time.", retry_after=2),
            15: IdempotencyMismatch("This Idempotency-Key was first used with another order."),
            16: RuntimeError("a bug"),
        }
        if order.quantity in failures:
            raise failures[order.quantity]
        if order.quantity >= 500:
            raise OutOfStock(f"Only 499 left of product {order.product_id}.")
        seed = f"{order.user_id}/{order.product_id}/{order.quantity}/{channel}/{caller}/{key}"
        order_id = uuid.uuid5(uuid.NAMESPACE_URL, seed)
        return Accepted(
            order_id, "pending", order.user_id, order.product_id, order.quantity, channel or "kafka"
        )

    async def place_order(
        self, order: PlaceOrder, *, caller: str, idempotency_key: str | None = None
    ) -> domain.Order:
        pending = self._decide(order, None, caller, idempotency_key)
        return domain.Order(
            id=pending.id,
            user_id=order.user_id,
            product_id=order.product_id,
            quantity=order.quantity,
            status="confirmed",
            reason=None,
            unit_price=Decimal("19.90"),
            total_price=Decimal("19.90") * order.quantity,
            channel="sync",
            created_at=dt.datetime(2026, 12, 6, 12, 0, 0, 123456),
            updated_at=dt.datetime(2026, 12, 6, 12, 0, 0, 123456),
            version=1,
        )

    async def accept_order(
        self,
        order: PlaceOrder,
        *,
        channel: AsyncChannel,
        caller: str,
        idempotency_key: str | None = None,
    ) -> Accepted:
        return self._decide(order, channel, caller, idempotency_key)

    async def list_orders(self, query: OrderQuery) -> tuple[list[domain.Order], str | None]:
        return [], None

    async def get_order(self, order_id: uuid.UUID, *, owner: int | None) -> domain.Order:
        raise AssertionError("not a lean route")

    async def cancel_order(self, order_id: uuid.UUID, *, owner: int | None) -> domain.Order:
        raise AssertionError("not a lean route")


def products_in_memory() -> ProductService:
    """The product service over an in-memory catalogue of 60 products, so that pages differ by
    limit, cursor, name and price; a cursor it did not issue is refused as in production."""
    store = FakeProductStore()
    made = dt.datetime(2026, 1, 1, 12, 0, 0, 123456)
    for n in range(1, 61):
        name = f"{'chair' if n % 2 else 'table'} {n}"
        product = ProductView(n, name, "", Decimal(n).quantize(CENT), n % 7 or None, made, made)
        store.products[n] = Versioned(product, 1)
    return ProductService(store, on_event=lambda: None, settings=Products(cache_seconds=0))


class _Ticking(FakeClock):
    def monotonic(self) -> float:
        self.now += 0.1
        return self.now


def order_limits(clock: FakeClock | None = None) -> OrderLimits:
    """Limits whose clock moves 0.1 s per order: a customer's orders are refused (429) now and
    then, by their rate or by their units. Both apps see the same requests in the same order,
    so they decide alike."""
    terms = Orders(rate_per_second=4.0, burst=2, units_per_minute=600.0, units_burst=600)
    return OrderLimits(terms, slots=1024, clock=clock or _Ticking())


def search_limits(clock: FakeClock | None = None) -> SearchLimits:
    """A client's searches, refused now and then as `order_limits` refuses orders."""
    return SearchLimits(
        Products(search_rate_per_second=4.0, search_burst=2), slots=1024, clock=clock or _Ticking()
    )


CLIENTS = Clients(["127.0.0.1"])


def _apps(*, fastapi_routes: bool = True) -> tuple[FastAPI, FastAPI]:
    """(lean, plain): the same routes and fakes, with and without the lean routes."""
    orders, products = FakeOrders(), products_in_memory()
    auth = ISSUER.authenticator()
    built = []
    for lean in (True, False):
        limits = order_limits()
        app = app_factory.new_app(
            "test",
            service="lean-test",
            http=Http(max_body_bytes=MAX_BODY),
            lean=[*order_api.lean_routes(orders, auth, limits), *product_api.lean_routes(products)]
            if lean
            else (),
        )
        if fastapi_routes or not lean:
            app.include_router(order_api.router(orders, auth, limits))
            app.include_router(product_api.router(products, auth, search_limits(), CLIENTS))
        built.append(app)
    return built[0], built[1]


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


async def _answer(app: FastAPI, request: httpx.Request) -> tuple[int, list[Any], bytes]:
    """The answer over the protocol: the lean routes served as in production."""
    return await _send(ProtocolTransport(app), request)


async def _send(
    transport: ProtocolTransport, request: httpx.Request
) -> tuple[int, list[Any], bytes]:
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.send(request)
    return response.status_code, response.headers.multi_items(), response.content


def _same_answer(
    loop: asyncio.AbstractEventLoop, apps: tuple[FastAPI, FastAPI], request: Any
) -> Any:
    lean, plain = (loop.run_until_complete(_answer(app, request)) for app in apps)
    assert lean == plain
    return lean


APPS = _apps()

# Whose orders a request may place: user 1's (or, with orders:admin, anyone's); a token that
# does not verify, none at all, or two Authorization headers.
authorizations: st.SearchStrategy[list[str]] = st.sampled_from(
    [
        [f"Bearer {ISSUER.token(1)}"],
        [f"Bearer {ISSUER.token(1)}"],
        [f"Bearer {ISSUER.token('ops', ['orders:admin'])}"],
        [f"Bearer {ISSUER.token('ops')}"],
        [f"Bearer {ISSUER.token(2, ttl=-60)}"],
        ["Bearer not.a.token"],
        ["Basic dXNlcjpwYXNz"],
        [],
        [f"Bearer {ISSUER.token(1)}", f"Bearer {ISSUER.token(1)}"],
    ]
)

ids = st.one_of(st.integers(-3, 3), st.integers(2**63 - 2, 2**63 + 1), st.integers())
values = st.one_of(
    ids,
    st.integers(1, 1000),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.sampled_from(["5", "1e3", [], {}]),
)
fields = st.sampled_from(["user_id", "product_id", "quantity", "extra", "Quantity"])
good_order = st.fixed_dictionaries(
    {
        "user_id": st.integers(1, 10),
        "product_id": st.integers(1, 10),
        "quantity": st.integers(1, 600),
    }
)
json_bodies = st.one_of(
    good_order,
    good_order.flatmap(lambda o: st.dictionaries(fields, values).map(lambda d: {**o, **d})),
    st.dictionaries(fields, values),
    values,
).map(lambda v: json.dumps(v).encode())
raw_bodies = st.one_of(
    st.binary(max_size=40),
    st.just(b""),
    st.just(b'{"user_id": 1, "product_id": 2, "quantity": 3, "quantity": 4}'),
    st.just(b'{"user_id": 1, "product_id": 2, "quantity": NaN}'),
    st.just(b'\xef\xbb\xbf{"user_id": 1, "product_id": 2, "quantity": 3}'),
    st.just(b' {"user_id": 1, "product_id": 2, "quantity": 3}\n'),
    st.just(b'{"user_id": 1, "product_id": 2, "quantity": 3, "pad": "' + b"x" * MAX_BODY + b'"}'),
)
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ]
)
keys: st.SearchStrategy[list[str]] = st.one_of(
    st.just([]),
    st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=8), max_size=2),
    # Control characters and DEL (the server's parser refuses them, 400, before any route),
    # and the latin-1 octets a header may carry; not CR or LF, which end a header on the wire.
    st.lists(
        st.text(
            st.characters(max_codepoint=255, exclude_characters="\r\n"), min_size=1, max_size=4
        ),
        max_size=1,
    ),
    st.just(["k" * 255]),
    st.just(["k" * 256]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(["/orders/sync", "/orders/async/kafka", "/orders/async/rabbitmq"]),
    body=st.one_of(json_bodies, raw_bodies),
    content_type=content_types,
    idempotency_keys=keys,
    authorization=authorizations,
)
def test_order_intakes_answer_as_fastapi_does(
    loop: asyncio.AbstractEventLoop,
    path: str,
    body: bytes,
    content_type: str | None,
    idempotency_keys: list[str],
    authorization: list[str],
) -> None:
    headers = [(b"Idempotency-Key", key.encode("latin-1")) for key in idempotency_keys]
    headers += [(b"Authorization", value.encode()) for value in authorization]
    if content_type is not None:
        headers.append((b"Content-Type", content_type.encode()))
    request = httpx.Request("POST", f"http://shop.test{path}", content=body, headers=headers)
    _same_answer(loop, APPS, request)


# (key, whether FastAPI's header type takes it, whether the server's parser lets it through)
KEYS = [
    ("k" * 255, True, True),
    ("a b\tc", True, True),
    ("caf\u00e9", True, True),
    ("k" * 256, False, True),
    ("", False, True),
    ("a\x00", False, False),
    ("a\nb", False, False),
    ("del\x7f", False, False),
    ("\x1b", False, False),
]


@pytest.mark.parametrize(("key", "valid", "sendable"), KEYS)
def test_a_plain_order_with_any_key_answers_as_fastapi_does(
    loop: asyncio.AbstractEventLoop, key: str, valid: bool, sendable: bool
) -> None:
    """A key the server's parser refuses is answered 400 before any route, lean or not."""
    user = 40 + KEYS.index((key, valid, sendable))  # a customer per key: a full bucket
    for path in ("sync", "async/kafka"):
        status, _, _ = _same_answer(loop, APPS, _order_with_key(path, user, key))
        accepted = 201 if path == "sync" else 202
        assert status == ((accepted if valid else 422) if sendable else 400)


@pytest.mark.parametrize(("key", "valid", "sendable"), KEYS)
def test_the_lean_routes_take_exactly_the_keys_fastapi_takes(
    loop: asyncio.AbstractEventLoop, key: str, valid: bool, sendable: bool
) -> None:
    """Keys no HTTP server lets through too, as an ASGI client sends them: a lean route's parse
    refuses (hands to FastAPI) exactly what FastAPI's header type refuses (422)."""
    lean, plain = _apps()
    user = 40 + KEYS.index((key, valid, sendable))
    for path in ("sync", "async/kafka"):
        request = _order_with_key(path, user, key)
        route = lean.state.lean.routes[("POST", request.url.path)]
        scope = {"headers": [(name.lower(), value) for name, value in request.headers.raw]}
        assert (route.parse(scope, request.read()) is not None) is valid
        status = loop.run_until_complete(_in_process(plain, request))
        assert status == ((201 if path == "sync" else 202) if valid else 422)


async def _in_process(app: FastAPI, request: httpx.Request) -> int:
    """The status of the answer to a client of the ASGI app: FastAPI's routes alone."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport) as client:
        return (await client.send(request)).status_code


def _order_with_key(path: str, user: int, key: str) -> httpx.Request:
    headers = {b"Idempotency-Key": key.encode("latin-1")}
    headers |= {name.encode(): value.encode() for name, value in ISSUER.bearer(user).items()}
    order = {"user_id": user, "product_id": 2, "quantity": 3}
    return httpx.Request("POST", f"http://t/orders/{path}", json=order, headers=headers)


limits = st.sampled_from(
    ["", "0", "1", "7", "100", "1000", "1001", "01", "+5", "5.0", "abc", "%31"]
)
cursors = st.sampled_from(["", encode_cursor(0), encode_cursor(7), "cD0=", "no!", "x" * 201])
params = st.lists(
    st.one_of(
        limits.map(lambda v: f"limit={v}"),
        cursors.map(lambda v: f"cursor={v}"),
        st.sampled_from(["name=chair", "min_price=1", "max_price=0", "other=1", "limit", ""]),
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=params.map("&".join))
def test_product_list_answers_as_fastapi_does(loop: asyncio.AbstractEventLoop, query: str) -> None:
    url = f"http://shop.test/products?{query}" if query else "http://shop.test/products"
    _same_answer(loop, APPS, httpx.Request("GET", url))


def test_plain_requests_are_answered_by_the_lean_routes_alone(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Without FastAPI's routes, plain requests still get their answer, from the protocol (the
    app is not called); others reach the app and find nothing."""
    lean_only, _ = _apps(fastapi_routes=False)
    wire = ProtocolTransport(lean_only)

    def send(request: httpx.Request) -> tuple[int, int]:
        """The status, and how many requests reached the app."""
        before = wire.calls
        status, _, _ = loop.run_until_complete(_send(wire, request))
        return status, wire.calls - before

    paths = (("sync", 201), ("async/kafka", 202), ("async/rabbitmq", 202))
    for user, (path, status) in enumerate(paths, start=10):  # one customer each: no 429
        order = {"user_id": user, "product_id": 2, "quantity": 3}
        token = ISSUER.bearer(user)
        url = f"http://t/orders/{path}"
        assert send(httpx.Request("POST", url, json=order, headers=token)) == (status, 0)
        assert send(httpx.Request("POST", url, json=order)) == (401, 0)
        assert send(httpx.Request("POST", url, json=order, headers=ISSUER.bearer(2))) == (403, 0)
        refused = httpx.Request("POST", url, json={**order, "quantity": 0}, headers=token)
        assert send(refused) == (404, 1)  # not plain: FastAPI's router, with no such route here
    assert send(httpx.Request("GET", "http://t/products?limit=7")) == (200, 0)
    assert send(httpx.Request("GET", "http://t/products?limit=0")) == (404, 1)


def test_lean_answers_are_counted_under_their_route(loop: asyncio.AbstractEventLoop) -> None:
    counter = middleware.HTTP_REQUESTS.labels("lean-test", "POST", "/orders/async/kafka", "202")
    before = counter._value.get()
    order = {"user_id": 77, "product_id": 2, "quantity": 3}  # a customer with a full bucket
    url = "http://t/orders/async/kafka"
    request = httpx.Request("POST", url, json=order, headers=ISSUER.bearer(77))
    wire = ProtocolTransport(APPS[0])
    assert loop.run_until_complete(_send(wire, request))[0] == 202
    assert wire.calls == 0  # a lean answer: the app's metrics middleware never saw it
    assert counter._value.get() == before + 1
