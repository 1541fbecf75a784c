"""Outbox relays: two on one table (two replicas) never publish a row twice, whether a row
carries one event or many; a commit in another process wakes the relay; the purge deletes only
what it should."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import MetaData, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import jsonutil
from shop.events import Event
from shop.messaging.kafka import KafkaPublisher, KafkaTopic, ensure_topics
from shop.messaging.ports import Outgoing
from shop.settings import Outbox, Settings
from shop.storage import outbox
from shop.storage.outbox import Relay, outbox_table
from shop.storage.write_counter import SharedGeneration
from tests.support import eventually, observer, read_events

pytestmark = pytest.mark.integration

EVENTS = 3000


class _Counting:
    """The real publisher, counting what it was given."""

    def __init__(self, inner: KafkaTopic) -> None:
        self.inner = inner
        self.sent = 0

    async def publish(self, messages: Sequence[Outgoing], *, timeout: float) -> None:
        await self.inner.publish(messages, timeout=timeout)
        self.sent += len(messages)


class _NeverCalled:
    """The purge publishes nothing."""

    async def publish(self, messages: Sequence[Outgoing], *, timeout: float) -> None:
        raise AssertionError("the purge must not publish")


@pytest.fixture
async def scratch_outbox(database: AsyncEngine) -> AsyncIterator[Any]:
    """An outbox table of this test's own, beside the services' tables."""
    table = outbox_table(f"test_outbox_{uuid.uuid4().hex[:8]}", MetaData())
    async with database.begin() as conn:
        await conn.run_sync(table.create)
    yield table
    async with database.begin() as conn:
        await conn.run_sync(table.drop)


@pytest.mark.parametrize("round_events", [outbox.MAX_ROUND_EVENTS, 25])
async def test_two_relays_publish_every_event_exactly_once(
    database: AsyncEngine,
    scratch_outbox: Any,
    settings: Settings,
    round_events: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 25: a round stops at the first row that would take it past 25 events.
    monkeypatch.setattr(outbox, "MAX_ROUND_EVENTS", round_events)
    topic = f"{settings.kafka.product_events_topic}-relay-{uuid.uuid4().hex[:6]}"
    await ensure_topics(observer(settings), [topic])
    # Rows of 1 to 19 events, as batches of any size write them.
    async with database.begin() as conn:
        start = size = 0
        while start < EVENTS:
            size = size % 19 + 1
            await outbox.add_events(
                conn,
                scratch_outbox,
                [
                    Event("product", "test.event", str(i), 1, {"id": i})
                    for i in range(start, min(EVENTS, start + size))
                ],
            )
            start += size
    publishers = [KafkaPublisher(observer(settings), delivery_timeout=10) for _ in range(2)]
    counting = [_Counting(p.topic(topic)) for p in publishers]
    relays = [
        Relay(
            engine=database,
            table=scratch_outbox,
            publisher=p,
            outbox=Outbox(batch_size=100, poll_seconds=0.05, publish_timeout_seconds=10),
        )
        for p in counting
    ]
    stopping = asyncio.Event()
    running = [asyncio.create_task(r.run(stopping)) for r in relays]
    try:

        async def drained() -> bool:
            async with database.connect() as conn:
                left = await conn.scalar(
                    select(func.count())
                    .select_from(scratch_outbox)
                    .where(scratch_outbox.c.sent_at.is_(None))
                )
            return left == 0

        await eventually(drained, timeout=60, what="outbox drained by two relays")
    finally:
        stopping.set()
        await asyncio.gather(*running)
        for p in publishers:
            await p.close()
    events = await asyncio.to_thread(
        read_events,
        observer(settings),
        topic,
        until=lambda evs: len(evs) >= EVENTS,
        timeout=60,
        settle=3,
    )
    ids = [e["data"]["id"] for e in events]
    assert len(ids) == EVENTS, (
        f"{len(ids) - len(set(ids))} duplicates, {EVENTS - len(set(ids))} lost"
    )
    assert set(ids) == set(range(EVENTS))
    assert all(p.sent > 0 for p in counting), "both relays should have taken part"


async def test_purge_deletes_only_events_published_before_the_retention(
    database: AsyncEngine, scratch_outbox: Any
) -> None:
    async with database.begin() as conn:
        for i in range(30):  # a row each
            await outbox.add_events(
                conn, scratch_outbox, [Event("product", "test.event", str(i), 1, {"id": i})]
            )
        ids = sorted((await conn.execute(select(scratch_outbox.c.id))).scalars())
        now = jsonutil.utcnow()
        old, recent = ids[:10], ids[10:20]  # the last 10 stay unsent
        await conn.execute(
            update(scratch_outbox)
            .where(scratch_outbox.c.id.in_(old))
            .values(sent_at=now - dt.timedelta(hours=2))
        )
        await conn.execute(
            update(scratch_outbox)
            .where(scratch_outbox.c.id.in_(recent))
            .values(sent_at=now - dt.timedelta(minutes=5))
        )
    relay = Relay(
        engine=database,
        table=scratch_outbox,
        publisher=_NeverCalled(),
        outbox=Outbox(batch_size=100, poll_seconds=0.05, publish_timeout_seconds=10),
    )
    assert await relay.published.purge_once() == 10
    assert await relay.published.purge_once() == 0
    async with database.connect() as conn:
        left = sorted((await conn.execute(select(scratch_outbox.c.id))).scalars())
    assert left == ids[10:], "published within the hour and unsent events stay"


async def test_a_commit_in_another_process_wakes_the_relay(
    database: AsyncEngine, scratch_outbox: Any, settings: Settings, tmp_path: Path
) -> None:
    """An HTTP worker's commit is relayed by its consumer process at once, not at the next poll:
    the worker's notify() bumps the shared commit counter that the relaying process reads."""
    topic = f"{settings.kafka.product_events_topic}-wake-{uuid.uuid4().hex[:6]}"
    await ensure_topics(observer(settings), [topic])
    publisher = KafkaPublisher(observer(settings), delivery_timeout=10)
    # Two mappings of one file, as the relaying process and a worker each hold one.
    relaying, writing = (SharedGeneration(tmp_path / "commits") for _ in range(2))

    def relay(commits: SharedGeneration) -> Relay:
        return Relay(
            engine=database,
            table=scratch_outbox,
            publisher=publisher.topic(topic),
            # poll_seconds: a poll would come far too late for this test
            outbox=Outbox(batch_size=100, poll_seconds=60, publish_timeout_seconds=10),
            commits=commits,
        )

    worker = relay(writing)  # only its notify() is used, as in an HTTP worker
    stopping = asyncio.Event()
    running = asyncio.create_task(relay(relaying).run(stopping))
    try:
        await asyncio.sleep(0.5)  # the relay has found the table empty and idles
        async with database.begin() as conn:
            await outbox.add_events(
                conn, scratch_outbox, [Event("product", "test.event", "1", 1, {"id": 1})]
            )
        started = time.monotonic()
        worker.notify()

        async def sent() -> bool:
            async with database.connect() as conn:
                return bool(
                    await conn.scalar(
                        select(func.count()).where(scratch_outbox.c.sent_at.is_not(None))
                    )
                )

        await eventually(sent, timeout=10, what="the event relayed")
        assert time.monotonic() - started < 2, "relayed at a poll, not woken by the commit"
    finally:
        stopping.set()
        await running
        await publisher.close()
        relaying.close()
        writing.close()


async def test_the_backlog_gauges_show_the_unsent_events_and_the_age_of_the_oldest(
    database: AsyncEngine, scratch_outbox: Any
) -> None:
    """The gauges an operator alerts on (deploy/prometheus/rules.yml: ShopOutboxStuck) move
    while no relay publishes at all (Kafka down): the watch reads them on its own."""
    name = scratch_outbox.name

    def shown() -> tuple[float | None, float | None]:
        labels = {"table": name}
        return (
            REGISTRY.get_sample_value("outbox_backlog", labels),
            REGISTRY.get_sample_value("outbox_oldest_unsent_seconds", labels),
        )

    relay = Relay(
        engine=database,
        table=scratch_outbox,
        publisher=_NeverCalled(),
        outbox=Outbox(backlog_every_seconds=0.05),
    )
    stopping = asyncio.Event()
    watching = asyncio.create_task(relay.watch(stopping))
    try:

        async def empty() -> bool:
            return shown() == (0.0, 0.0)

        await eventually(empty, timeout=10, what="an empty backlog shown")
        async with database.begin() as conn:
            for i in range(3):
                await outbox.add_events(
                    conn, scratch_outbox, [Event("product", "test.event", str(i), 1, {"id": i})]
                )
            # The first row (the lowest id) was written 90 s ago; a sent one older still does
            # not count.
            first = select(func.min(scratch_outbox.c.id)).scalar_subquery()
            long_ago = jsonutil.utcnow() - dt.timedelta(seconds=90)
            await conn.execute(
                update(scratch_outbox)
                .where(scratch_outbox.c.id == first)
                .values(created_at=long_ago)
            )
            await outbox.add_events(conn, scratch_outbox, [Event("product", "t", "x", 1, {})])
            await conn.execute(
                update(scratch_outbox)
                .where(
                    scratch_outbox.c.id == select(func.max(scratch_outbox.c.id)).scalar_subquery()
                )
                .values(created_at=long_ago - dt.timedelta(hours=1), sent_at=long_ago)
            )

        async def aged() -> bool:
            count, oldest = shown()
            return count == 3 and oldest is not None and 90 <= oldest < 120

        await eventually(aged, timeout=10, what="3 unsent shown, the oldest 90 s old")
    finally:
        stopping.set()
        await watching
