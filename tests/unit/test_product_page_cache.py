"""The cache of product pages: one load per expiry, writes are seen at once, also by the other
worker processes of the service, and the bodies kept stay within their byte budget.

The database is replaced by a counting loader, and time by a clock the tests move: what is
tested is the cache's own logic (`shop.products.page_cache`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from pathlib import Path

import pytest

from shop import jsonutil
from shop.products.domain import ProductQuery
from shop.products.page_cache import Page, PageCache
from shop.settings import Products
from shop.storage.write_counter import Generation, SharedGeneration

QUERY = ProductQuery(limit=100)


class _Shared:
    """The stand-in's database: what every worker's catalogue reads."""

    version = 0


class _Catalogue:
    """One worker's page cache over the stand-in database; loads wait for `gate`."""

    def __init__(self, writes: Generation | None = None, shared: _Shared | None = None) -> None:
        settings = Products(cache_seconds=60, cache_bytes=1 << 20)
        self.pages = PageCache(self._load, settings, writes=writes or Generation())
        self.loads = 0
        self.shared = shared or _Shared()
        self.fail = False
        self.gate = asyncio.Event()

    async def _load(self, query: ProductQuery) -> Page:
        self.loads += 1
        seen = self.shared.version
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("database down")
        return Page(jsonutil.dumps([{"id": 1, "version": seen}]), None)

    async def body(self) -> bytes:
        return (await self.pages.get(QUERY)).body

    def write(self) -> None:
        self.shared.version += 1
        self.pages.written()


async def test_concurrent_readers_of_an_expired_page_share_one_load() -> None:
    catalogue = _Catalogue()
    readers = [asyncio.ensure_future(catalogue.body()) for _ in range(50)]
    await asyncio.sleep(0.01)
    catalogue.gate.set()
    pages = await asyncio.gather(*readers)
    assert catalogue.loads == 1
    assert len(set(pages)) == 1
    await catalogue.body()
    assert catalogue.loads == 1, "the page is cached afterwards"


def _writer_and_reader(workers: int, tmp_path: Path) -> tuple[_Catalogue, _Catalogue]:
    """One catalogue that both writes and reads, or two worker processes' catalogues over one
    database and one shared write counter."""
    if workers == 1:
        catalogue = _Catalogue()
        return catalogue, catalogue
    database, counter = _Shared(), tmp_path / "products.generation"
    return (
        _Catalogue(SharedGeneration(counter), database),
        _Catalogue(SharedGeneration(counter), database),
    )


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_read_after_a_write_does_not_join_a_load_begun_before_it(
    workers: int, tmp_path: Path
) -> None:
    writer, reader = _writer_and_reader(workers, tmp_path)
    before = asyncio.ensure_future(reader.body())
    await asyncio.sleep(0.01)
    writer.write()
    after = asyncio.ensure_future(reader.body())
    await asyncio.sleep(0.01)
    reader.gate.set()
    assert b'"version":0' in await before
    assert b'"version":1' in await after
    assert reader.loads == 2
    assert b'"version":1' in await reader.body(), (
        "the stale load must not be cached over the fresh one"
    )


async def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    catalogue = _Catalogue()
    catalogue.fail = True
    readers = [asyncio.ensure_future(catalogue.body()) for _ in range(5)]
    await asyncio.sleep(0.01)
    catalogue.gate.set()
    for outcome in await asyncio.gather(*readers, return_exceptions=True):
        assert isinstance(outcome, ConnectionError)
    catalogue.fail = False
    assert b'"id":1' in await catalogue.body()
    assert catalogue.loads == 2


async def test_a_reader_that_goes_away_does_not_cancel_the_shared_load() -> None:
    catalogue = _Catalogue()
    leaving = asyncio.ensure_future(catalogue.body())
    staying = asyncio.ensure_future(catalogue.body())
    await asyncio.sleep(0.01)
    leaving.cancel()
    catalogue.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert b'"id":1' in await staying
    assert catalogue.loads == 1


async def test_a_write_in_one_worker_is_seen_by_the_next_read_in_another(tmp_path: Path) -> None:
    first, second = _writer_and_reader(2, tmp_path)
    for catalogue in (first, second):
        catalogue.gate.set()
        assert b'"version":0' in await catalogue.body()
    first.write()
    assert b'"version":1' in await second.body()
    assert second.loads == 2
    assert b'"version":1' in await second.body()
    assert second.loads == 2, "cached again once loaded after the write"


def _bump(path: Path, times: int) -> None:
    counter = SharedGeneration(path)
    for _ in range(times):
        counter.bump()
    counter.close()


def test_bumps_from_concurrent_processes_are_never_lost(tmp_path: Path) -> None:
    path = tmp_path / "writes.generation"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_bump, args=(path, 2000)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert SharedGeneration(path).value() == 8000


class _Pages:
    """Pages of a chosen size, by `limit`, on a clock the test moves."""

    def __init__(self, *, budget: int, seconds: float) -> None:
        self.now = 1000.0
        self.loads = 0
        self.cache = PageCache(
            self._load,
            Products(cache_seconds=seconds, cache_bytes=budget),
            writes=Generation(),
            clock=lambda: self.now,
        )

    async def _load(self, query: ProductQuery) -> Page:
        self.loads += 1
        return Page(jsonutil.dumps([{"pad": "x" * (query.limit * 10)}]), None)

    async def get(self, query: ProductQuery) -> bytes:
        return (await self.cache.get(query)).body

    def kept(self) -> list[ProductQuery]:
        return list(self.cache._pages)

    def kept_bytes(self) -> int:
        return sum(len(page.body) for _, page in self.cache._pages.values())


@pytest.mark.parametrize("seed", range(5))
async def test_the_cache_holds_at_most_its_byte_budget(seed: int) -> None:
    rng = random.Random(seed)
    pages = _Pages(budget=50_000, seconds=60)
    for _ in range(300):
        await pages.get(ProductQuery(limit=rng.randint(1, 1000)))
        assert pages.kept_bytes() <= 50_000
        assert pages.kept_bytes() == pages.cache._pages.currsize
    huge = ProductQuery(limit=1000, name="huge")  # 10 kB: within budget, so cached
    await pages.get(huge)
    loads = pages.loads
    await pages.get(huge)
    assert pages.loads == loads, "the newest page stays cached"


async def test_a_page_is_served_from_the_cache_until_it_expires() -> None:
    pages = _Pages(budget=10_000_000, seconds=1)
    await pages.get(QUERY)
    pages.now += 0.9
    await pages.get(QUERY)
    assert pages.loads == 1
    pages.now += 0.2
    await pages.get(QUERY)
    assert pages.loads == 2


async def test_expired_pages_are_let_go_when_the_next_is_cached() -> None:
    pages = _Pages(budget=10_000_000, seconds=1)
    for limit in range(1, 101):
        await pages.get(ProductQuery(limit=limit))
    assert len(pages.kept()) == 100
    pages.now += 2  # all of them expired
    await pages.get(ProductQuery(limit=500))
    assert pages.kept() == [ProductQuery(limit=500)]
    assert pages.kept_bytes() == pages.cache._pages.currsize


async def test_a_page_larger_than_the_budget_is_served_but_not_kept() -> None:
    pages = _Pages(budget=100, seconds=60)
    body = await pages.get(ProductQuery(limit=50))
    assert len(body) > 100
    assert not pages.kept()
    assert pages.cache._pages.currsize == 0


async def test_without_cache_seconds_every_read_loads() -> None:
    pages = _Pages(budget=10_000_000, seconds=0)
    for _ in range(3):
        await pages.get(QUERY)
    assert pages.loads == 3
    assert not pages.kept()
