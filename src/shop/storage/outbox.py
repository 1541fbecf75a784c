"""Transactional outbox: events written with the change that caused them, relayed to Kafka."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence

from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge
from sqlalchemy import BigInteger, Column, Index, LargeBinary, MetaData, String, Table, func, select
from sqlalchemy.dialects.mysql import MEDIUMBLOB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tenacity import wait_exponential

from shop import jsonutil, tracing
from shop.events import Event
from shop.ids import uuid7
from shop.messaging.ports import Outbound, Outgoing
from shop.settings import Outbox
from shop.storage import database
from shop.storage.expiry import Expiry
from shop.storage.write_counter import Generation
from shop.supervision import first_of, keep_trying

log = logging.getLogger(__name__)

OUTBOX_PUBLISHED = Counter("outbox_published_total", "Outbox events published", ["table"])
OUTBOX_FAILURES = Counter("outbox_publish_failures_total", "Failed relay rounds", ["table"])
OUTBOX_BACKLOG = Gauge(
    "outbox_backlog", "Outbox events not yet published", ["table"], multiprocess_mode="max"
)
OUTBOX_OLDEST = Gauge(
    "outbox_oldest_unsent_seconds",
    "Seconds since the oldest outbox event not yet published was written (0: none waits)",
    ["table"],
    multiprocess_mode="max",
)


def outbox_table(name: str, metadata: MetaData) -> Table:
    """An outbox table; each service owns one."""
    return Table(
        name,
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False),
        Column("event_key", String(64), nullable=False),
        Column("payload", LargeBinary().with_variant(MEDIUMBLOB(), "mysql"), nullable=False),
        Column("created_at", database.Timestamp, nullable=False),
        Column("sent_at", database.Timestamp, nullable=True),
        # The transaction's span, when it was traced: the relay's publish joins its trace.
        Column("traceparent", String(55), nullable=True),
        Index(f"ix_{name}_unsent", "sent_at", "id"),
    )


def envelope(event: Event, occurred_at: dt.datetime) -> tuple[str, bytes]:
    """The event's id and its JSON envelope `{event_id, type, version, occurred_at, data}`.

    `version` is the aggregate's version after the change (see shop.events).
    """
    event_id = str(uuid7())
    body = {
        "event_id": event_id,
        "type": event.type,
        "version": event.version,
        "occurred_at": occurred_at,
        "data": event.data,
    }
    return event_id, jsonutil.dumps(body)


_EVENT_COLUMNS = ("event_id", "event_key", "payload", "created_at", "traceparent")


async def add_events(conn: AsyncConnection, table: Table, events: Sequence[Event]) -> None:
    """Record events inside the caller's transaction; they are published only if it commits."""
    if events:
        await database.run_text(conn, insert_events_sql(table, events))


def insert_events_sql(table: Table, events: Sequence[Event]) -> str:
    """The INSERT of `add_events`, as SQL text for a caller that sends its own statements.

    The events of one change share one row (see `_messages`): an order batch's events were a
    row each, and every row cost MariaDB an insert, the relay's mark of it sent and its purge.
    """
    now = jsonutil.utcnow()
    framed = [envelope(event, now) for event in events]
    if len(events) == 1:
        key, payload = events[0].key, framed[0][1]
    else:
        key = MANY
        payload = b"".join(
            event.key.encode() + b"\t" + body + b"\n"
            for event, (_, body) in zip(events, framed, strict=True)
        )
    row = (framed[0][0], key, payload, now, tracing.traceparent())
    return database.insert_sql(table.name, _EVENT_COLUMNS, [row])


# The event_key of a row carrying several events: its payload is one line per event, the
# event's key, a tab and its envelope (compact JSON has no raw line breaks; keys no tabs).
MANY = ""
# At most this many events go to Kafka in one relay round (librdkafka queues 100,000).
MAX_ROUND_EVENTS = 20_000


def _messages(event_key: str, payload: bytes) -> list[Outgoing]:
    """The events an outbox row carries, as messages in the order they were written."""
    if event_key != MANY:
        return [Outgoing(event_key, payload)]
    lines = (line.partition(b"\t") for line in payload.splitlines())
    return [Outgoing(key.decode(), body) for key, _, body in lines]


class Relay:
    """Claims unsent rows with FOR UPDATE SKIP LOCKED, publishes them, marks them sent.

    The claim is held while publishing, so a second relay (another replica) skips those rows
    instead of sending them again. A crash between publish and commit re-sends: consumers
    de-duplicate on event_id.

    Writers call `notify()` after a commit; it bumps `commits`, which the relay reads every
    OUTBOX_ROUND_GAP_SECONDS while idle. Shared between processes (write_counter), that lets one
    process relay what its sibling HTTP workers commit.
    """

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        table: Table,
        publisher: Outbound,
        outbox: Outbox,
        commits: Generation | None = None,
    ) -> None:
        self._engine = engine
        self._table = table
        self._publisher = publisher
        self._settings = outbox
        self._retry_wait = wait_exponential(
            multiplier=outbox.retry_seconds, max=outbox.retry_max_seconds
        )
        # Without a purge the table grows forever (a few benchmark runs left 1.1 GB of sent rows);
        # sent_at < cutoff: a NULL (unsent) row never matches.
        self.published = Expiry(
            engine, table.c.sent_at, ttl_seconds=outbox.retention_seconds, outbox=outbox
        )
        self._commits = commits or Generation()
        self._seen = self._commits.value()
        self._wake = asyncio.Event()
        # Rounds are SQL text on the driver's connection (database.Statements): a round's four
        # statements through SQLAlchemy were half of a relay's CPU per round.
        self._claim = (
            f"SELECT id, event_key, payload, traceparent FROM {table.name} WHERE sent_at IS NULL "
            f"ORDER BY id LIMIT {outbox.batch_size:d} FOR UPDATE SKIP LOCKED"
        )

    def notify(self) -> None:
        """Tell the relay that new rows were committed, so it need not wait for its next poll."""
        self._commits.bump()
        self._wake.set()

    async def relay_once(self) -> tuple[int, bool]:
        """Publish the events of one batch of unsent rows: how many rows, and whether more may
        be waiting. A commit notified from here on wakes the next round."""
        self._wake.clear()
        self._seen = self._commits.value()
        t, publish_timeout = self._table, self._settings.publish_timeout_seconds
        async with database.statements_unit(self._engine, timeout=publish_timeout + 10) as sql:
            (claimed,) = await sql.run([self._claim])
            if not claimed:
                return 0, False  # (the unit ends its transaction)
            sent: list[int] = []
            rows: list[list[Outgoing]] = []
            traced: list[str | None] = []
            events = 0
            for row_id, event_key, payload, traceparent in claimed:
                carried = _messages(event_key, payload)
                if sent and events + len(carried) > MAX_ROUND_EVENTS:
                    break  # the rest stay unsent, for the next round
                sent.append(row_id)
                rows.append(carried)
                traced.append(traceparent)
                events += len(carried)
            await self._publish(rows, traced, timeout=publish_timeout)
            mark = (
                f"UPDATE {t.name} SET sent_at = {database.sql_literal(jsonutil.utcnow())} "
                f"WHERE id IN {database.in_list(sent)}"
            )
            await sql.run([mark], commit=True)
        OUTBOX_PUBLISHED.labels(t.name).inc(events)
        return len(sent), len(claimed) == self._settings.batch_size or len(sent) < len(claimed)

    async def _publish(
        self, rows: list[list[Outgoing]], traced: list[str | None], *, timeout: float
    ) -> None:
        """Publish the rows' events in one go; a traced row's in a PRODUCER span that joins the
        trace of the transaction that wrote it, and whose context its messages carry."""
        if not tracing.enabled() or not any(traced):
            await self._publisher.publish([m for row in rows for m in row], timeout=timeout)
            return
        parents = [tracing.parse(traceparent) for traceparent in traced]
        attributes = {"messaging.system": "kafka", "shop.outbox": self._table.name}
        traced_spans = tracing.spans(
            "publish events", parents, kind=SpanKind.PRODUCER, attributes=attributes
        )
        with traced_spans as spans:
            messages: list[Outgoing] = []
            for row, span in zip(rows, spans, strict=True):
                carried = None if span is None else tracing.headers(span)  # (once a row: a
                # batch's row carries hundreds of events)
                messages += row if carried is None else [m._replace(headers=carried) for m in row]
            await self._publisher.publish(messages, timeout=timeout)

    async def backlog(self) -> tuple[int, float]:
        """How many events wait to be published, and for how many seconds the first of them
        (the lowest id: rows are written in id order) has waited; both from the unsent index."""
        t, timeout = self._table, self._settings.backlog_timeout_seconds
        unsent = select(func.count()).select_from(t).where(t.c.sent_at.is_(None))
        first = select(t.c.created_at).where(t.c.sent_at.is_(None)).order_by(t.c.id).limit(1)
        async with database.unit_of_work(self._engine, timeout=timeout) as conn:
            count = await conn.scalar(unsent)
            oldest = await conn.scalar(first)
        waited = 0.0 if oldest is None else (jsonutil.utcnow() - oldest).total_seconds()
        return int(count or 0), max(0.0, waited)

    async def watch(self, stopping: asyncio.Event) -> None:
        """Read the backlog into its gauges every `backlog_every_seconds` until `stopping`:
        in a task of its own, so that the gauges move while the relay is busy or failing (a
        Kafka outage is when the age of the oldest event matters)."""
        name = self._table.name
        while not stopping.is_set():
            try:
                count, waited = await self.backlog()
                OUTBOX_BACKLOG.labels(name).set(count)
                OUTBOX_OLDEST.labels(name).set(waited)
            except Exception:  # the gauges are best effort; the relay reports the outage
                log.debug("could not read the outbox backlog", exc_info=True)
            await first_of(stopping, timeout=self._settings.backlog_every_seconds)

    async def run(self, stopping: asyncio.Event) -> None:
        """Relay until `stopping` is set, backing off while Kafka or the database is down."""
        while not stopping.is_set():
            relayed = await keep_trying(
                self.relay_once, stopping, wait=self._retry_wait, on_failure=self._failed
            )
            if relayed is None:
                return
            published, more = relayed
            if not more:
                await self._idle(stopping, published)

    def _failed(self, error: BaseException | None, delay: float) -> None:
        # After any outage the relay goes on; the rows stay unsent meanwhile.
        name = self._table.name
        OUTBOX_FAILURES.labels(name).inc()
        log.warning("outbox relay of %s failed (%s); retrying in %.1fs", name, error, delay)

    async def _idle(self, stopping: asyncio.Event, published: int) -> None:
        outbox = self._settings
        gap, poll = outbox.round_gap_seconds, outbox.poll_seconds
        if published:
            await first_of(stopping, timeout=gap)
        # The wake event serves this process's writers at once; the counter, read every gap,
        # the other processes'.
        for _ in range(max(1, round(poll / gap))):
            if self._wake.is_set() or self._commits.value() != self._seen or stopping.is_set():
                return
            await first_of(self._wake, stopping, timeout=min(gap, poll))
