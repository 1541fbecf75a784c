"""A per-process cache of rendered catalogue pages, with one shared load per page.

A page is fresh for `seconds`, and only while the write counter (`shop.storage.write_counter`)
still reads what it read when the page's load began: a product write in any worker process of
the service makes every page cached or being loaded before it stale; another service's writes
(orders taking stock) show within `seconds`. When a page expires, the requests that want it
meanwhile share one load instead of each querying the database at once (a stampede every
second that showed as multi-second p99 at 400 and 800 connections). The bodies kept weigh at
most `max_bytes`: expired pages go first, then the least recently used.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cachetools import TTLCache

from shop.products.domain import ProductQuery
from shop.settings import Products
from shop.storage.write_counter import Generation
from shop.supervision import retrieve


@dataclass(frozen=True, slots=True)
class Page:
    """A page of the catalogue as JSON, and the cursor of the next page if there is one."""

    body: bytes
    next_cursor: str | None


class PageCache:
    """Pages by query, loaded by `load`, kept as `settings` say (PRODUCT_LIST_CACHE_*);
    `clock` (seconds) is the cache's time."""

    def __init__(
        self,
        load: Callable[[ProductQuery], Awaitable[Page]],
        settings: Products,
        *,
        writes: Generation,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        seconds, max_bytes = settings.cache_seconds, settings.cache_bytes
        self._seconds = seconds
        self._writes = writes
        # Per query: (the write counter when its load began, the page).
        self._pages: TTLCache[ProductQuery, tuple[int, Page]] = TTLCache(
            maxsize=max_bytes, ttl=seconds, timer=clock, getsizeof=lambda page: len(page[1].body)
        )
        self._loading: dict[ProductQuery, tuple[int, asyncio.Future[Page]]] = {}

    async def get(self, query: ProductQuery) -> Page:
        writes = self._writes.value()
        try:
            cached = self._pages[query]
        except KeyError:
            pass
        else:
            if cached[0] == writes:
                return cached[1]
        if self._seconds <= 0:
            return await self._load(query)
        loading = self._loading.get(query)
        if loading is None or loading[0] != writes:
            future = asyncio.ensure_future(self._load_shared(query, writes))
            future.add_done_callback(retrieve)  # a failure went to every waiter left, if any
            loading = self._loading[query] = (writes, future)
        # Shielded: a caller that goes away does not cancel the load the others wait for.
        return await asyncio.shield(loading[1])

    async def _load_shared(self, query: ProductQuery, writes: int) -> Page:
        try:
            page = await self._load(query)
        finally:
            current = self._loading.get(query)
            if current is not None and current[0] == writes:
                del self._loading[query]
        # Kept only if no write came since the load began; never one above the whole budget.
        if self._writes.value() == writes and len(page.body) <= self._pages.maxsize:
            self._pages[query] = (writes, page)
        return page

    def written(self) -> None:
        """A product changed: pages cached or being loaded before now are stale, in every worker."""
        self._writes.bump()
        self._pages.clear()
