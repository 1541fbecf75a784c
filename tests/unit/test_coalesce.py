"""The group-commit coalescer: batches, per-request outcomes, failures, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from shop.errors import Unavailable
from shop.storage.group_commit import Coalescer


async def test_concurrent_requests_share_batches_and_get_their_own_outcome() -> None:
    batches: list[list[int]] = []

    async def handler(requests: Sequence[int]) -> list[int | Exception]:
        batches.append(list(requests))
        await asyncio.sleep(0)  # a transaction in flight: more requests arrive meanwhile
        return [ValueError(r) if r % 10 == 0 else r * 2 for r in requests]

    coalescer: Coalescer[int, int] = Coalescer(handler, max_batch=50, max_pending=1000, timeout=5)
    stopping = asyncio.Event()
    worker = asyncio.create_task(coalescer.run(stopping))
    results = await asyncio.gather(
        *(coalescer.submit(i) for i in range(1, 121)), return_exceptions=True
    )
    stopping.set()
    await worker
    for i, result in enumerate(results, start=1):
        if i % 10 == 0:
            assert isinstance(result, ValueError)
        else:
            assert result == i * 2
    assert sum(len(b) for b in batches) == 120
    assert max(len(b) for b in batches) <= 50
    assert len(batches) < 10


async def test_a_failed_batch_fails_each_of_its_requests() -> None:
    async def handler(requests: Sequence[int]) -> list[int | Exception]:
        raise ConnectionError("database down")

    coalescer: Coalescer[int, int] = Coalescer(handler, max_batch=10, max_pending=1000, timeout=5)
    stopping = asyncio.Event()
    worker = asyncio.create_task(coalescer.run(stopping))
    outcomes = await asyncio.gather(
        coalescer.submit(1), coalescer.submit(2), return_exceptions=True
    )
    stopping.set()
    await worker
    assert all(isinstance(o, ConnectionError) for o in outcomes)


async def test_stopping_finishes_what_is_pending() -> None:
    async def handler(requests: Sequence[int]) -> list[int | Exception]:
        return list(requests)

    coalescer: Coalescer[int, int] = Coalescer(handler, max_batch=10, max_pending=1000, timeout=5)
    stopping = asyncio.Event()
    pending = [asyncio.create_task(coalescer.submit(i)) for i in range(25)]
    await asyncio.sleep(0)
    stopping.set()
    await coalescer.run(stopping)
    assert [await p for p in pending] == list(range(25))


async def test_without_a_worker_a_request_times_out() -> None:
    async def handler(requests: Sequence[int]) -> list[int | Exception]:
        return list(requests)

    coalescer: Coalescer[int, int] = Coalescer(
        handler, max_batch=10, max_pending=1000, timeout=0.05
    )
    with pytest.raises(Unavailable):
        await coalescer.submit(1)


async def test_a_request_that_timed_out_waiting_is_never_handed_to_the_handler() -> None:
    handled: list[int] = []
    release = asyncio.Event()

    async def handler(requests: Sequence[int]) -> list[int | Exception]:
        handled.extend(requests)
        taken.set()
        await release.wait()  # a slow transaction: the next requests wait in the queue
        return list(requests)

    coalescer: Coalescer[int, int] = Coalescer(handler, max_batch=1, max_pending=10, timeout=0.05)
    stopping = asyncio.Event()
    worker = asyncio.create_task(coalescer.run(stopping))
    taken = asyncio.Event()
    first = asyncio.create_task(coalescer.submit(1))
    await taken.wait()  # 1 is taken into a batch
    with pytest.raises(Unavailable):
        await coalescer.submit(2)  # waits behind 1 longer than the timeout: refused
    release.set()
    assert await first == 1  # taken before its timeout: its caller waits for the outcome
    stopping.set()
    await worker
    assert handled == [1]  # 2 was never stored, so its caller's 503 was the truth


async def test_a_caller_that_goes_away_before_its_batch_is_dropped() -> None:
    handled: list[int] = []

    async def handler(requests: Sequence[int]) -> list[int | Exception]:
        handled.extend(requests)
        return list(requests)

    coalescer: Coalescer[int, int] = Coalescer(handler, max_batch=10, max_pending=10, timeout=5)
    waiting = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    stopping = asyncio.Event()
    stopping.set()
    await coalescer.run(stopping)
    assert handled == []


async def test_a_full_queue_refuses_at_once() -> None:
    async def handler(requests: Sequence[int]) -> list[int | Exception]:
        return list(requests)

    coalescer: Coalescer[int, int] = Coalescer(handler, max_batch=10, max_pending=3, timeout=5)
    queued = [asyncio.create_task(coalescer.submit(i)) for i in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(Unavailable) as refused:
        await coalescer.submit(3)
    assert refused.value.retry_after >= 1
    stopping = asyncio.Event()
    stopping.set()
    await coalescer.run(stopping)
    assert [await q for q in queued] == [0, 1, 2]
