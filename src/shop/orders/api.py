"""HTTP routes of the order service."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from shop.http import JSONResponse
from shop.orders.models import Order, OrderStatus
from shop.orders.service import OrderQuery, OrderService


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
        headers = {}
        if next_cursor is not None:
            next_url = request.url.include_query_params(cursor=next_cursor)
            headers["Link"] = f'<{next_url}>; rel="next"'
        return JSONResponse(page, headers=headers)

    @api.get("/{order_id}", response_model=Order, response_class=JSONResponse)
    async def get_order(order_id: Annotated[uuid.UUID, Path()]) -> Response:
        """Get one order."""
        return JSONResponse(await service.get_order(order_id))

    return api
