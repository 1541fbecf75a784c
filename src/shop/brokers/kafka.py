"""Kafka through confluent-kafka, with librdkafka's blocking calls kept off the event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]
T = TypeVar("T")


class PublishError(Exception):
    """The broker did not acknowledge a message in time, or refused it."""


def producer_config(brokers: str, *, delivery_timeout: float) -> dict[str, Any]:
    """An idempotent producer (acks=all) whose failures surface within `delivery_timeout`."""
    return {
        "bootstrap.servers": brokers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,
        "compression.type": "lz4",
        "message.timeout.ms": int(delivery_timeout * 1000),
        "socket.timeout.ms": 5000,
        "reconnect.backoff.max.ms": 1000,
        **client_logging(),
    }


class _OncePer(logging.Filter):
    """Lets a repeated librdkafka line through once per `seconds`: during a broker outage it
    reports every reconnect attempt, several a second."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self._seconds = seconds
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        head = record.getMessage()[:80]
        now = time.monotonic()
        if now - self._last.get(head, -self._seconds) < self._seconds:
            return False
        self._last[head] = now
        return True


_rdkafka_log = logging.getLogger("librdkafka")
_rdkafka_log.addFilter(_OncePer(30.0))


def client_logging() -> dict[str, Any]:
    """librdkafka logs (errors and worse) through Python logging."""
    return {"logger": _rdkafka_log, "log_level": 3, "log.connection.close": False}


class KafkaPublisher:
    """Publishes messages and awaits their delivery reports.

    produce() itself never blocks; delivery reports arrive through poll(), which a daemon
    thread calls. The reports of one poll() go back to the event loop in one
    call_soon_threadsafe: one loop wake-up per poll, not per message (py-spy showed the
    per-message hand-over costing a quarter of the intake path).
    """

    def __init__(self, brokers: str, *, delivery_timeout: float) -> None:
        self._producer = Producer(producer_config(brokers, delivery_timeout=delivery_timeout))
        self._delivery_timeout = delivery_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reports: list[tuple[asyncio.Future[None], KafkaError | None]] = []
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll_forever, name="kafka-poll", daemon=True)
        self._poller.start()

    def _poll_forever(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.05)
            self._hand_over()

    def _hand_over(self) -> None:
        if self._reports and self._loop is not None:
            reports, self._reports = self._reports, []
            self._loop.call_soon_threadsafe(_settle_all, reports)

    async def publish_many(
        self,
        topic: str,
        messages: Sequence[tuple[str, bytes]],
        *,
        headers: Headers | None = None,
        timeout: float | None = None,
    ) -> None:
        """Send messages (in order, per key) and wait until every one is acknowledged."""
        loop = self._loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for key, value in messages:
            fut: asyncio.Future[None] = loop.create_future()
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=headers,
                    on_delivery=partial(_report, self, fut),
                )
            except (BufferError, KafkaException) as exc:
                for pending in futures:
                    pending.cancel()
                raise PublishError(f"could not queue message for {topic}: {exc}") from exc
            futures.append(fut)
        wait = timeout if timeout is not None else self._delivery_timeout + 1
        try:
            async with asyncio.timeout(wait):
                if len(futures) == 1:
                    await futures[0]
                else:
                    await asyncio.gather(*futures)
        except TimeoutError as exc:
            raise PublishError(f"no acknowledgement from Kafka within {wait:.1f}s") from exc

    async def check(self, timeout: float) -> None:
        """Raise unless a broker answers a metadata request within `timeout` seconds."""
        await asyncio.to_thread(self._producer.list_topics, timeout=timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the poll thread, then deliver what is queued (up to `timeout`)."""
        self._stopping.set()
        await asyncio.to_thread(self._poller.join, 2.0)
        remaining = await asyncio.to_thread(self._producer.flush, timeout)
        self._hand_over()
        if remaining:
            log.warning("kafka producer closed with %d undelivered messages", remaining)


def _report(
    publisher: KafkaPublisher, fut: asyncio.Future[None], err: KafkaError | None, _msg: Any
) -> None:
    # Runs in whichever thread called poll() or flush(); list.append is atomic under the GIL.
    publisher._reports.append((fut, err))


def _settle_all(reports: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    for fut, err in reports:
        if fut.done():
            continue
        if err is None:
            fut.set_result(None)
        else:
            fut.set_exception(PublishError(str(err)))


async def ensure_topics(
    brokers: str, topics: Sequence[str], *, partitions: int = 4, timeout: float = 5.0
) -> None:
    """Create the topics that do not exist yet (single-node replication)."""

    def _create() -> None:
        admin = AdminClient({"bootstrap.servers": brokers, **client_logging()})
        existing = admin.list_topics(timeout=timeout).topics
        missing = [
            NewTopic(t, num_partitions=partitions, replication_factor=1)
            for t in topics
            if t not in existing
        ]
        if not missing:
            return
        for topic, fut in admin.create_topics(missing, operation_timeout=timeout).items():
            try:
                fut.result(timeout=timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            log.info("created kafka topic %s", topic)

    await asyncio.to_thread(_create)


class KafkaBatchConsumer:
    """A consumer-group member whose offsets are stored only when the caller says so.

    librdkafka's consumer calls block, so every one runs on a single dedicated thread (the
    consumer is not safe to call from two threads at once). Stored offsets are committed by
    the auto-committer every second and on close: after a crash, at most that much is
    delivered again, and the order consumer skips what it already stored.
    """

    def __init__(self, brokers: str, *, topic: str, group: str) -> None:
        self._topic = topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": brokers,
                "group.id": group,
                "enable.auto.commit": True,
                "auto.commit.interval.ms": 1000,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1000,
                **client_logging(),
            }
        )
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-consumer-{topic}")
        self._subscribed = False

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, partial(fn, *args, **kwargs))

    async def poll_batch(self, *, max_messages: int, timeout: float) -> list[Message]:
        """Up to `max_messages` messages, waiting at most `timeout` for the first."""
        if not self._subscribed:
            await self._call(self._consumer.subscribe, [self._topic])
            self._subscribed = True
        messages = await self._call(self._consumer.consume, max_messages, timeout)
        good = []
        for message in messages:
            err = message.error()
            if err is None:
                good.append(message)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka consumer error on %s: %s", self._topic, err)
        return good

    async def store(self, messages: Sequence[Message]) -> None:
        """Mark messages processed: their offsets will be committed."""
        last: dict[tuple[str, int], int] = {}
        for message in messages:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue
            last[topic, partition] = max(last.get((topic, partition), -1), offset)
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        if offsets:
            try:
                await self._call(self._consumer.store_offsets, offsets=offsets)
            except KafkaException as exc:
                # The partition moved to another member during a rebalance: it will process
                # these again, and skip the orders we stored.
                log.warning("could not store offsets on %s: %s", self._topic, exc)

    async def lag(self) -> int:
        """Messages not yet consumed on the partitions this member holds."""

        def _lag() -> int:
            assigned = self._consumer.assignment()
            if not assigned:
                return 0
            total = 0
            for tp in self._consumer.position(assigned):
                _low, high = self._consumer.get_watermark_offsets(tp, timeout=2, cached=False)
                total += max(0, high - max(tp.offset, 0))
            return total

        return await self._call(_lag)

    async def close(self) -> None:
        """Commit what was stored, leave the group, stop the thread."""
        await self._call(self._consumer.close)
        self._thread.shutdown(wait=True)
