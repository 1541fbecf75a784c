"""/readyz tells the truth about the database."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import devstack as stack
from devstack.settings import StackSettings
from tests.conftest import STACK
from tests.support import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.disruptive]


async def test_readyz_fails_without_mariadb_and_recovers(
    products: httpx.AsyncClient, settings: StackSettings
) -> None:
    assert (await products.get("/readyz")).status_code == 200
    await asyncio.to_thread(stack.stop, "mariadb", STACK)
    try:

        async def not_ready() -> bool:
            response = await products.get("/readyz")
            return response.status_code == 503 and "database" in response.json()["detail"]

        await eventually(not_ready, timeout=20, what="/readyz reporting the database down")
        failed_write = await products.post("/products", json={"name": "x", "price": 1})
        assert failed_write.status_code == 503
        assert failed_write.headers["retry-after"]
        assert (await products.get("/healthz")).status_code == 200
    finally:
        await asyncio.to_thread(stack.start, "mariadb", STACK)

    async def ready() -> bool:
        return (await products.get("/readyz")).status_code == 200

    await eventually(ready, timeout=30, what="/readyz after MariaDB restart")
    assert (await products.post("/products", json={"name": "back", "price": 1})).status_code == 201
