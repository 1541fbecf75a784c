"""HTTP routes of the order service: parse, call the service, map the result."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from shop.deps import IdempotencyKey
from shop.http import JSONResponse, next_page_link
from shop.orders.models import Accepted, Order, OrderStatus, PlaceOrder
from shop.orders.service import OrderQuery, OrderService

OrderId = Annotated[uuid.UUID, Path(description="The order's id (a UUID)")]


def router(service: OrderService) -> APIRouter:
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
        placed = await service.place_order(body, idempotency_key=key)
        return JSONResponse(placed, status_code=201, headers={"Location": _at(placed["id"])})

    @api.post(
        "/async/kafka",
        status_code=202,
        response_model=Accepted,
        response_class=JSONResponse,
        responses={503: {"description": "Kafka unavailable"}},
    )
    async def accept_order_kafka(body: PlaceOrder, key: IdempotencyKey = None) -> Response:
        """Accept an order through Kafka; a consumer confirms or rejects it shortly."""
        return _accepted(await service.accept_order(body, channel="kafka", idempotency_key=key))

    @api.post(
        "/async/rabbitmq",
        status_code=202,
        response_model=Accepted,
        response_class=JSONResponse,
        responses={503: {"description": "RabbitMQ unavailable"}},
    )
    async def accept_order_rabbitmq(body: PlaceOrder, key: IdempotencyKey = None) -> Response:
        """Accept an order through RabbitMQ; a consumer confirms or rejects it shortly."""
        return _accepted(await service.accept_order(body, channel="rabbitmq", idempotency_key=key))

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


def _at(order_id: str) -> str:
    return f"/orders/{order_id}"


def _accepted(accepted: dict[str, object]) -> Response:
    return JSONResponse(accepted, status_code=202, headers={"Location": _at(str(accepted["id"]))})
