"""Intake's price cache: one read per product at a time, stale over nothing, no wait when down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from shop.orders.prices import Prices
from shop.settings import Orders
from tests.clock import FakeClock


class FakeDb:
    """Answers price reads after a turn of the event loop, never when `silent`, or fails when
    `down`."""

    def __init__(self, prices: dict[int, Decimal], *, silent: bool = False) -> None:
        self.prices = prices
        self.silent = silent
        self.down = False
        self.reads = 0

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Any]:
        self.reads += 1
        if self.down:
            raise ConnectionError("database down")
        yield self

    async def scalar(self, _statement: Any, params: dict[str, int]) -> Decimal | None:
        await (asyncio.Event().wait() if self.silent else asyncio.sleep(0))
        return self.prices.get(params["pid"])


async def test_requests_that_miss_together_share_one_read() -> None:
    db = FakeDb({1: Decimal("2.50")})
    prices = Prices(db, Orders())
    found = await asyncio.gather(*(prices.get(1) for _ in range(100)))
    assert found == [Decimal("2.50")] * 100
    assert db.reads == 1
    assert await prices.get(1) == Decimal("2.50")
    assert db.reads == 1  # cached


async def test_an_unknown_product_has_no_price_and_is_read_again_later() -> None:
    db = FakeDb({})
    prices = Prices(db, Orders())
    assert await prices.get(7) is None
    db.prices[7] = Decimal("1.00")
    assert await prices.get(7) == Decimal("1.00")


async def test_a_price_is_read_again_once_its_time_to_live_is_over() -> None:
    db = FakeDb({1: Decimal("3.00")})
    clock = FakeClock()
    prices = Prices(db, Orders(intake_price_seconds=60), clock=clock)
    assert await prices.get(1) == Decimal("3.00")
    clock.now += 59
    db.prices[1] = Decimal("4.00")
    assert await prices.get(1) == Decimal("3.00")
    clock.now += 2
    assert await prices.get(1) == Decimal("4.00")
    assert db.reads == 2


async def test_when_the_database_is_down_intake_goes_on_with_the_last_price() -> None:
    db = FakeDb({1: Decimal("3.00")})
    clock = FakeClock()
    prices = Prices(
        db, Orders(intake_price_seconds=60, intake_price_budget_seconds=0.5), clock=clock
    )
    assert await prices.get(1) == Decimal("3.00")
    clock.now += 61
    db.down = True
    assert await prices.get(1) == Decimal("3.00")  # stale, not nothing
    reads = db.reads
    assert await prices.get(2) is None
    assert db.reads == reads  # no read while it is known to be down (twice the budget)
    clock.now += 1.0
    assert await prices.get(2) is None
    assert db.reads == reads + 1


async def test_a_slow_database_costs_a_request_at_most_the_budget() -> None:
    db = FakeDb({1: Decimal("3.00")}, silent=True)
    prices = Prices(db, Orders(intake_price_budget_seconds=0.05))
    async with asyncio.timeout(1.0):
        assert await prices.get(1) is None
