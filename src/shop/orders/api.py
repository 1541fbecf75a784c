"""HTTP routes of the order service: parse, call the service, map the result."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, Security
from pydantic import ValidationError
from starlette.types import Scope

from shop import jsonutil
from shop.access.rate_limit import OrderLimits
from shop.access.verifier import ADMIN_SCOPE, Authenticator, Forbidden, Principal, caller
from shop.fields import MAX_ID
from shop.orders import domain
from shop.orders.domain import AsyncChannel, Channel, OrderStatus, order_view
from shop.orders.models import Accepted, Order, PlaceOrder
from shop.orders.service import OrderQuery, OrderService
from shop.settings import Orders as OrderSettings
from shop.storage.idempotency import is_key
from shop.web import openapi as doc
from shop.web.dependencies import IdempotencyKey
from shop.web.fastpath.routes import LeanRoute, Reply, as_response, is_json, single_headers
from shop.web.problems import JSONResponse, next_page_link

OrderId = Annotated[uuid.UUID, Path(description="The order's id (a UUID)")]


# What a client can do next with the order an answer names. Not from the asynchronous intakes:
# their order is stored only when a consumer has taken it, so it may not be there yet.
_BY_ID = {"order_id": "$response.body#/id"}
_NEXT = {
    "GetOrder": doc.link("get_order", **_BY_ID),
    "CancelOrder": doc.link("cancel_order", **_BY_ID),
}
# Refusals of every order placement (a body, a token, the customer's rate, a dependency down).
_PLACING = (*doc.BODY, *doc.TOKEN, 429, 503)


def document_quantity(document: dict[str, Any], *, most: int) -> None:
    """Declare MAX_ORDER_QUANTITY (as configured) as the maximum of an order's `quantity`."""
    document["components"]["schemas"]["PlaceOrder"]["properties"]["quantity"]["maximum"] = most


PLACING_OPERATIONS = ("/orders/sync", "/orders/async/kafka", "/orders/async/rabbitmq")


def document_limits(document: dict[str, Any], *, orders: OrderSettings) -> None:
    """Declare the customers' order limits (as configured) in the placements' 429."""
    described = (
        f"Over one of the customer's limits, named by `limit`: `orders` ({orders.burst} at "
        f"once, then {orders.rate_per_second:g} a second: ORDER_BURST, ORDER_RATE_PER_SECOND) "
        f"or `units` ({orders.units_burst} units at once, then {orders.units_per_minute:g} a "
        "minute: CUSTOMER_UNITS_BURST, CUSTOMER_UNITS_PER_MINUTE), counted per customer by "
        "all the service's workers on a node. A refused order spends neither. `orders:admin` "
        "is not limited."
    )
    for path in PLACING_OPERATIONS:
        document["paths"][path]["post"]["responses"]["429"]["description"] = described


def _owner(principal: Principal) -> int | None:
    """Whose orders the caller may see: its own, or anyone's (None) with orders:admin."""
    return None if principal.has(ADMIN_SCOPE) else principal.customer()


def router(service: OrderService, auth: Authenticator, limits: OrderLimits) -> APIRouter:
    api = APIRouter(prefix="/orders", tags=["orders"])
    verified = caller(auth)

    @api.get(
        "",
        operation_id="list_orders",
        response_model=list[Order],
        responses={200: {"headers": doc.NEXT_PAGE}, **doc.refusals(*doc.TOKEN, 422, 503)},
    )
    async def list_orders(
        request: Request,
        principal: Principal = Security(verified),
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
        user_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
        status: OrderStatus | None = None,
    ) -> Response:
        """List orders oldest first, a page at a time; the next page is in the Link header.

        A customer sees their own orders; `orders:admin` sees everyone's and may filter by user.
        """
        user_id = domain.listed_user(_owner(principal), user_id)
        query = OrderQuery(limit=limit, cursor=cursor, user_id=user_id, status=status)
        page, next_cursor = await service.list_orders(query)
        views = [order_view(o) for o in page]
        return JSONResponse(views, headers=next_page_link(request.scope, next_cursor))

    @api.get(
        "/{order_id}",
        operation_id="get_order",
        response_model=Order,
        responses=doc.refusals(*doc.TOKEN, 404, 422, 503),
    )
    async def get_order(order_id: OrderId, principal: Principal = Security(verified)) -> Response:
        """Get one of your orders (any order with `orders:admin`)."""
        return JSONResponse(order_view(await service.get_order(order_id, owner=_owner(principal))))

    @api.post(
        "/sync",
        operation_id="place_order",
        response_model=Order,
        **doc.created(_NEXT, *_PLACING, also={409: doc.refusal(409, "Not enough stock.")}),
    )
    async def place_order(
        body: PlaceOrder, principal: Principal = Security(verified), key: IdempotencyKey = None
    ) -> Response:
        """Place an order now: stock is reserved and the order confirmed, or 409."""
        return as_response(await _intake(service, limits, principal, body, "sync", key))

    def accepting(channel: AsyncChannel, broker: str) -> None:
        async def accept_order(
            body: PlaceOrder, principal: Principal = Security(verified), key: IdempotencyKey = None
        ) -> Response:
            return as_response(await _intake(service, limits, principal, body, channel, key))

        api.post(
            f"/async/{channel}",
            operation_id=f"accept_order_{channel}",
            summary=f"Accept Order {channel.title()}",
            description=f"Accept an order through {broker}; a consumer confirms or rejects it "
            "shortly.",
            status_code=202,
            response_model=Accepted,
            responses={
                202: {"headers": doc.LOCATION},
                **doc.refusals(*_PLACING),
                503: doc.refusal(503, f"{broker} did not confirm in time."),
            },
        )(accept_order)

    accepting("kafka", "Kafka")
    accepting("rabbitmq", "RabbitMQ")

    @api.post(
        "/{order_id}/cancel",
        operation_id="cancel_order",
        response_model=Order,
        responses={
            **doc.refusals(*doc.TOKEN, 404, 422, 503),
            409: doc.refusal(409, "The order is not confirmed."),
        },
    )
    async def cancel_order(
        order_id: OrderId, principal: Principal = Security(verified)
    ) -> Response:
        """Cancel a confirmed order of yours (any with `orders:admin`) and release its stock."""
        order = await service.cancel_order(order_id, owner=_owner(principal))
        return JSONResponse(order_view(order))

    return api


def lean_routes(
    service: OrderService, auth: Authenticator, limits: OrderLimits
) -> list[LeanRoute[Any]]:
    """The three order intakes, answered without FastAPI in the plain case (`fastpath.routes`)."""

    def intake(channel: Channel) -> LeanRoute[PlainOrder]:
        async def answer(_scope: Scope, plain: PlainOrder) -> Reply:
            order, key, authorization = plain
            principal = await auth.principal(authorization)
            return await _intake(service, limits, principal, order, channel, key)

        path = "/orders/sync" if channel == "sync" else f"/orders/async/{channel}"
        return LeanRoute("POST", path, _plain_order, answer)

    return [intake("sync"), intake("kafka"), intake("rabbitmq")]


async def _intake(
    service: OrderService,
    limits: OrderLimits,
    principal: Principal,
    order: PlaceOrder,
    channel: Channel,
    key: str | None,
) -> Reply:
    """An order's answer (sync: placed now; else accepted), for its FastAPI and lean routes.
    The key is the caller's (the token's subject) for the order's user."""
    # A customer orders as themselves, within their limits; orders:admin for anyone, unlimited.
    owner = _owner(principal)
    if owner is not None:
        if order.user_id != owner:
            raise Forbidden("An order's user_id must be the token's user.")
        # An order refused anyway (422) spends nothing, and is never told to retry (429).
        service.check_order(order)
        limits.admit(owner, order.quantity)
    caller = principal.subject
    if channel == "sync":
        view = order_view(await service.place_order(order, caller=caller, idempotency_key=key))
        return _reply(201, view["id"], view)
    accepted = await service.accept_order(
        order, channel=channel, caller=caller, idempotency_key=key
    )
    return _reply(202, str(accepted.id), accepted)


# An order body, its Idempotency-Key and its Authorization header.
PlainOrder = tuple[PlaceOrder, str | None, str | None]


def _plain_order(scope: Scope, body: bytes) -> PlainOrder | None:
    """A JSON order body that validates, with at most one valid Idempotency-Key and at most one
    Authorization header; else None."""
    headers = single_headers(scope, (b"content-type", b"idempotency-key", b"authorization"))
    if headers is None or not is_json(headers.get(b"content-type")):
        return None
    key = None
    if b"idempotency-key" in headers:
        key = headers[b"idempotency-key"].decode("latin-1")
        if not is_key(key):
            return None
    authorization = headers.get(b"authorization")
    try:
        order = PlaceOrder.model_validate_json(body)
    except ValidationError:
        return None
    return order, key, authorization.decode("latin-1") if authorization is not None else None


def _reply(status: int, order_id: str, answer: object) -> Reply:
    return Reply(status, jsonutil.dumps(answer), ((b"location", f"/orders/{order_id}".encode()),))
