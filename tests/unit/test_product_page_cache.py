"""The cache of product pages: one load per expiry, and writes are seen at once, also by the
other worker processes of the service.

The database is replaced by a counting stand-in: what is tested is the cache's own logic.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from pathlib import Path
from typing import Any, cast

import pytest

from shop.products.service import ProductQuery, ProductService
from shop.storage.database import Database
from shop.storage.write_counter import Generation, SharedGeneration

QUERY = ProductQuery(limit=100)


class _Catalogue(ProductService):
    def __init__(self, writes: Generation | None = None, shared: _Shared | None = None) -> None:
        super().__init__(
            cast(Database, None), on_event=lambda: None, list_cache_seconds=60, writes=writes
        )
        self.loads = 0
        self.shared = shared or _Shared()
        self.fail = False
        self.gate = asyncio.Event()

    async def list_products(self, query: ProductQuery) -> tuple[list[dict[str, Any]], None]:
        self.loads += 1
        seen = self.shared.version
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("database down")
        return [{"id": 1, "version": seen}], None

    def write(self) -> None:
        self.shared.version += 1
        self._changed()


class _Shared:
    """The stand-in's database: what every worker's catalogue reads."""

    version = 0


async def test_concurrent_readers_of_an_expired_page_share_one_load() -> None:
    catalogue = _Catalogue()
    readers = [asyncio.ensure_future(catalogue.list_products_json(QUERY)) for _ in range(50)]
    await asyncio.sleep(0.01)
    catalogue.gate.set()
    pages = await asyncio.gather(*readers)
    assert catalogue.loads == 1
    assert len({body for body, _ in pages}) == 1
    await catalogue.list_products_json(QUERY)
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
    before = asyncio.ensure_future(reader.list_products_json(QUERY))
    await asyncio.sleep(0.01)
    writer.write()
    after = asyncio.ensure_future(reader.list_products_json(QUERY))
    await asyncio.sleep(0.01)
    reader.gate.set()
    assert b'"version":0' in (await before)[0]
    assert b'"version":1' in (await after)[0]
    assert reader.loads == 2
    assert b'"version":1' in (await reader.list_products_json(QUERY))[0], (
        "the stale load must not be cached over the fresh one"
    )


async def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    catalogue = _Catalogue()
    catalogue.fail = True
    readers = [asyncio.ensure_future(catalogue.list_products_json(QUERY)) for _ in range(5)]
    await asyncio.sleep(0.01)
    catalogue.gate.set()
    for outcome in await asyncio.gather(*readers, return_exceptions=True):
        assert isinstance(outcome, ConnectionError)
    catalogue.fail = False
    assert b'"id":1' in (await catalogue.list_products_json(QUERY))[0]
    assert catalogue.loads == 2


async def test_a_reader_that_goes_away_does_not_cancel_the_shared_load() -> None:
    catalogue = _Catalogue()
    leaving = asyncio.ensure_future(catalogue.list_products_json(QUERY))
    staying = asyncio.ensure_future(catalogue.list_products_json(QUERY))
    await asyncio.sleep(0.01)
    leaving.cancel()
    catalogue.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert b'"id":1' in (await staying)[0]
    assert catalogue.loads == 1


async def test_a_write_in_one_worker_is_seen_by_the_next_read_in_another(tmp_path: Path) -> None:
    first, second = _writer_and_reader(2, tmp_path)
    for catalogue in (first, second):
        catalogue.gate.set()
        assert b'"version":0' in (await catalogue.list_products_json(QUERY))[0]
    first.write()
    assert b'"version":1' in (await second.list_products_json(QUERY))[0]
    assert second.loads == 2
    assert b'"version":1' in (await second.list_products_json(QUERY))[0]
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


class _Pages(ProductService):
    """Pages of a chosen size, by `limit`; a clock the test moves."""

    def __init__(self, *, budget: int, seconds: float) -> None:
        super().__init__(
            cast(Database, None),
            on_event=lambda: None,
            list_cache_seconds=seconds,
            list_cache_bytes=budget,
        )
        self.loads = 0

    async def list_products(self, query: ProductQuery) -> tuple[list[dict[str, Any]], None]:
        self.loads += 1
        return [{"pad": "x" * (query.limit * 10)}], None

    def cached_bytes(self) -> int:
        return sum(len(page[2]) for page in self._pages.values())


@pytest.mark.parametrize("seed", range(5))
async def test_the_cache_holds_at_most_its_byte_budget(seed: int) -> None:
    rng = random.Random(seed)
    catalogue = _Pages(budget=50_000, seconds=60)
    for _ in range(300):
        await catalogue.list_products_json(ProductQuery(limit=rng.randint(1, 1000)))
        assert catalogue.cached_bytes() <= 50_000
        assert catalogue.cached_bytes() == catalogue._cached_bytes
    huge = ProductQuery(limit=1000, name="huge")  # 10 kB: within budget, so cached
    await catalogue.list_products_json(huge)
    loads = catalogue.loads
    await catalogue.list_products_json(huge)
    assert catalogue.loads == loads, "the newest page stays cached"


async def test_expired_pages_are_let_go_when_the_next_is_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("shop.products.service.time.monotonic", lambda: now[0])
    catalogue = _Pages(budget=10_000_000, seconds=1)
    for limit in range(1, 101):
        await catalogue.list_products_json(ProductQuery(limit=limit))
    assert len(catalogue._pages) == 100
    now[0] += 2  # all of them expired
    await catalogue.list_products_json(ProductQuery(limit=500))
    assert list(catalogue._pages) == [ProductQuery(limit=500)]
    assert catalogue.cached_bytes() == catalogue._cached_bytes


async def test_a_page_larger_than_the_budget_is_served_but_not_kept() -> None:
    catalogue = _Pages(budget=100, seconds=60)
    body, _ = await catalogue.list_products_json(ProductQuery(limit=50))
    assert len(body) > 100
    assert not catalogue._pages
    assert catalogue._cached_bytes == 0
