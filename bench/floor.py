"""The HTTP floor: the order service's server, framework and middleware answering a validated
order body with a 202, without any I/O. What no order endpoint can beat on this machine.

Run: uvicorn --factory bench.floor:app (the bench starts it like the services).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from shop.ids import uuid7
from shop.orders.models import Accepted, PlaceOrder
from shop.runtime import gc_tuning as heap
from shop.settings import load_settings
from shop.web import app_factory
from shop.web.problems import JSONResponse


@asynccontextmanager
async def settled(_app: FastAPI) -> AsyncIterator[None]:
    """The garbage collector settled once started, as the services' is."""
    heap.settle()
    yield


def app() -> FastAPI:
    settings = load_settings()
    floor = app_factory.new_app("HTTP floor", service="floor", http=settings.http, lifespan=settled)

    @floor.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive."""
        return {"status": "ok"}

    @floor.post("/orders/async/floor", status_code=202, response_model=Accepted)
    async def accept(body: PlaceOrder) -> Any:
        """Validate, make an id, answer: the order path minus the broker."""
        order_id = str(uuid7())
        return JSONResponse(
            {
                "id": order_id,
                "status": "pending",
                "user_id": body.user_id,
                "product_id": body.product_id,
                "quantity": body.quantity,
                "channel": "kafka",
            },
            status_code=202,
            headers={"Location": f"/orders/{order_id}"},
        )

    return floor
