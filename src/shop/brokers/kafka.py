"""Kafka through confluent-kafka, with librdkafka's blocking calls kept off the event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]


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
    thread calls and hands back to the loop with call_soon_threadsafe.
    """

    def __init__(self, brokers: str, *, delivery_timeout: float) -> None:
        self._config = producer_config(brokers, delivery_timeout=delivery_timeout)
        self._producer = Producer(self._config)
        self._brokers = brokers
        self._delivery_timeout = delivery_timeout
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll_forever, name="kafka-poll", daemon=True)
        self._poller.start()

    def _poll_forever(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.1)

    async def publish(
        self, topic: str, *, key: str, value: bytes, headers: Headers | None = None
    ) -> None:
        """Send one message and wait for the broker's acknowledgement."""
        await self.publish_many(topic, [(key, value)], headers=headers)

    async def publish_many(
        self,
        topic: str,
        messages: Sequence[tuple[str, bytes]],
        *,
        headers: Headers | None = None,
        timeout: float | None = None,
    ) -> None:
        """Send messages (in order, per key) and wait until every one is acknowledged."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []

        def _reporter(fut: asyncio.Future[None]) -> Any:
            def report(err: KafkaError | None, _msg: Any) -> None:
                loop.call_soon_threadsafe(_settle, fut, err)

            return report

        for key, value in messages:
            fut: asyncio.Future[None] = loop.create_future()
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=_reporter(fut)
                )
            except (BufferError, KafkaException) as exc:
                for pending in futures:
                    pending.cancel()
                raise PublishError(f"could not queue message for {topic}: {exc}") from exc
            futures.append(fut)
        wait = timeout if timeout is not None else self._delivery_timeout + 1
        try:
            async with asyncio.timeout(wait):
                await asyncio.gather(*futures)
        except TimeoutError as exc:
            raise PublishError(f"no acknowledgement from Kafka within {wait:.1f}s") from exc

    async def check(self, timeout: float) -> None:
        """Raise unless a broker answers a metadata request within `timeout` seconds."""
        await asyncio.to_thread(self._producer.list_topics, timeout=timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to `timeout`), then stop the poll thread."""
        remaining = await asyncio.to_thread(self._producer.flush, timeout)
        if remaining:
            log.warning("kafka producer closed with %d undelivered messages", remaining)
        self._stopping.set()
        await asyncio.to_thread(self._poller.join, 2.0)


def _settle(fut: asyncio.Future[None], err: KafkaError | None) -> None:
    if fut.done():
        return
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
