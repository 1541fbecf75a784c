"""HTTP routes of the order service: parse, call the service, map the result."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import ValidationError
from starlette.types import Scope

from shop import jsonutil
from shop.deps import IdempotencyKey
from shop.http import JSONResponse, next_page_link
from shop.idempotency import MAX_KEY_LENGTH
from shop.lean import LeanRoute, Reply, as_response, is_json, single_headers
from shop.orders.models import Accepted, AsyncChannel, Order, OrderStatus, PlaceOrder
from shop.orders.service import OrderQuery

OrderId = Annotated[uuid.UUID, Path(description="The order's id (a UUID)")]


class Orders(Protocol):
    """What the routes ask of the order service (`shop.orders.service.OrderService`)."""

    async def list_orders(self, query: OrderQuery) -> tuple[list[dict[str, Any]], str | None]: ...

    async def get_order(self, order_id: uuid.UUID) -> dict[str, Any]: ...

    async def place_order(
        self, order: PlaceOrder, *, idempotency_key: str | None = None
    ) -> dict[str, Any]: ...

    async def accept_order(
        self, order: PlaceOrder, *, channel: AsyncChannel, idempotency_key: str | None = None
    ) -> dict[str, Any]: ...

    async def cancel_order(self, order_id: uuid.UUID) -> dict[str, Any]: ...


def router(service: Orders) -> APIRouter:
    api = APIRouter(prefix="/orders", tags=["orders"])

    @api.get("", response_model=list[Order], response_class=JSONResponse)
    async def list_orders(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
        user_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
        status: OrderStatus | None = None,
    ) -> Response:
        """List orders oldest first, a page at a time; the next page is in the Link header."""
        page, next_cursor = await service.list_orders(
            OrderQuery(limit=limit, cursor=cursor, user_id=user_id, status=status)
        )
        return JSONResponse(page, headers=next_page_link(request, next_cursor))

    @api.get("/{order_id}", response_model=Order, response_class=JSONResponse)
    async def get_order(order_id: OrderId) -> Response:
        """Get one order."""
        return JSONResponse(await service.get_order(order_id))

    @api.post(
        "/sync",
        status_code=201,
        response_model=Order,
        response_class=JSONResponse,
        responses={409: {"description": "Not enough stock"}},
    )
    async def place_order(body: PlaceOrder, key: IdempotencyKey = None) -> Response:
        """Place an order now: stock is reserved and the order confirmed, or 409."""
        return as_response(await _place(service, body, key))

    @api.post(
        "/async/kafka",
        status_code=202,
        response_model=Accepted,
        response_class=JSONResponse,
        responses={503: {"description": "Kafka unavailable"}},
    )
    async def accept_order_kafka(body: PlaceOrder, key: IdempotencyKey = None) -> Response:
        """Accept an order through Kafka; a consumer confirms or rejects it shortly."""
        return as_response(await _accept(service, body, "kafka", key))

    @api.post(
        "/async/rabbitmq",
        status_code=202,
        response_model=Accepted,
        response_class=JSONResponse,
        responses={503: {"description": "RabbitMQ unavailable"}},
    )
    async def accept_order_rabbitmq(body: PlaceOrder, key: IdempotencyKey = None) -> Response:
        """Accept an order through RabbitMQ; a consumer confirms or rejects it shortly."""
        return as_response(await _accept(service, body, "rabbitmq", key))

    @api.post(
        "/{order_id}/cancel",
        response_model=Order,
        response_class=JSONResponse,
        responses={409: {"description": "The order is not confirmed"}},
    )
    async def cancel_order(order_id: OrderId) -> Response:
        """Cancel a confirmed order and release its stock."""
        return JSONResponse(await service.cancel_order(order_id))

    return api


def lean_routes(service: Orders) -> list[LeanRoute[Any]]:
    """The three order intakes, answered without FastAPI in the plain case (`shop.lean`)."""

    async def place(_scope: Scope, plain: tuple[PlaceOrder, str | None]) -> Reply:
        return await _place(service, *plain)

    def accept(channel: AsyncChannel) -> LeanRoute[tuple[PlaceOrder, str | None]]:
        async def answer(_scope: Scope, plain: tuple[PlaceOrder, str | None]) -> Reply:
            order, key = plain
            return await _accept(service, order, channel, key)

        return LeanRoute("POST", f"/orders/async/{channel}", _plain_order, answer)

    return [
        LeanRoute("POST", "/orders/sync", _plain_order, place),
        accept("kafka"),
        accept("rabbitmq"),
    ]


async def _place(service: Orders, order: PlaceOrder, key: str | None) -> Reply:
    """A sync order's answer, for its FastAPI route and its lean route alike."""
    return _reply(201, await service.place_order(order, idempotency_key=key))


async def _accept(
    service: Orders, order: PlaceOrder, channel: AsyncChannel, key: str | None
) -> Reply:
    """An async order's answer, for its FastAPI route and its lean route alike."""
    return _reply(202, await service.accept_order(order, channel=channel, idempotency_key=key))


_ORDER_HEADERS = (b"content-type", b"idempotency-key")


def _plain_order(scope: Scope, body: bytes) -> tuple[PlaceOrder, str | None] | None:
    """A JSON order body that validates, with at most one valid Idempotency-Key; else None."""
    headers = single_headers(scope, _ORDER_HEADERS)
    if headers is None or not is_json(headers.get(b"content-type")):
        return None
    key = None
    if b"idempotency-key" in headers:
        key = headers[b"idempotency-key"].decode("latin-1")
        if not 1 <= len(key) <= MAX_KEY_LENGTH:
            return None
    try:
        return PlaceOrder.model_validate_json(body), key
    except ValidationError:
        return None


def _reply(status: int, answer: dict[str, Any]) -> Reply:
    location = _at(str(answer["id"])).encode()
    return Reply(status, jsonutil.dumps(answer), ((b"location", location),))


def _at(order_id: str) -> str:
    return f"/orders/{order_id}"
