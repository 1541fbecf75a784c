"""Product prices as order intake last read them, to bound an order's total before a 202.

Only the bound depends on them: the consumer prices the order when it stores it. A price is
trusted for `ttl` seconds; the requests that miss it at the same moment share one read (at 800
connections an expiry was up to 800 reads at once); a read has a short budget, and when the
database does not answer intake goes on without it (with the last price it had, if any). At
most 100,000 prices are kept, the least recently used forgotten first.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from typing import Any, Protocol

from cachetools import LRUCache
from sqlalchemy import bindparam, select

from shop.clock import SYSTEM, Clock
from shop.products.tables import products
from shop.settings import Orders

log = logging.getLogger(__name__)

_PRICE = select(products.c.price).where(products.c.id == bindparam("pid"))


class Reader(Protocol):
    def read(self) -> AbstractAsyncContextManager[Any]: ...


class Prices:
    """A per-process cache of product prices with one read per product at a time."""

    def __init__(self, db: Reader, settings: Orders, *, clock: Clock = SYSTEM) -> None:
        self._db = db
        self._ttl = settings.intake_price_seconds
        self._budget = settings.intake_price_budget_seconds
        self._now = clock.monotonic
        # product id: (expires, price); kept past `expires` to serve while the database is down
        self._cached: LRUCache[int, tuple[float, Decimal]] = LRUCache(100_000)
        self._loading: dict[int, asyncio.Future[Decimal | None]] = {}
        self._down_until = 0.0

    async def get(self, product_id: int) -> Decimal | None:
        """The price, or None when intake cannot tell (no such product, database silent)."""
        now = self._now()
        expires, last = self._cached.get(product_id, (0.0, None))
        if expires > now or now < self._down_until:
            return last  # fresh; or stale (or None) while the database is known to be down
        load = self._loading.get(product_id)
        if load is None:
            load = asyncio.ensure_future(self._load(product_id))
            self._loading[product_id] = load
            load.add_done_callback(lambda _: self._loading.pop(product_id, None))
        price = await asyncio.shield(load)  # a caller that goes away leaves the read to others
        return price if price is not None else last

    async def _load(self, product_id: int) -> Decimal | None:
        try:
            async with asyncio.timeout(self._budget), self._db.read() as conn:
                price = await conn.scalar(_PRICE, {"pid": product_id})
        except Exception as exc:  # intake works without the database: the consumer checks
            log.debug("price of product %s unknown at intake: %r", product_id, exc)
            self._down_until = self._now() + self._budget * 2  # spare the next requests
            return None
        if price is None:
            return None
        self._cached[product_id] = (self._now() + self._ttl, Decimal(price))
        return Decimal(price)
