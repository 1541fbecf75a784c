"""The Kafka adapter of the messaging ports, on confluent-kafka.

librdkafka's blocking calls never run on the event loop: the producer is polled by a thread of
its own, the consumer's calls run on a dedicated thread. librdkafka connects and reconnects by
itself: `KafkaBroker.start` only makes sure the topics exist. Every client, ours, the tests' and
the bench's, reaches the brokers as `client_config` says (TLS and SASL from the settings).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, NamedTuple, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from confluent_kafka.cimpl import NewTopic
from prometheus_client import Gauge

from shop.messaging.ports import Outgoing, PublishError
from shop.settings import Kafka
from shop.supervision import Supervisor

log = logging.getLogger(__name__)

T = TypeVar("T")

# Each consumer process sets its own partitions' lag, and 0 on a partition it no longer holds
# (its new holder sets the real figure; the processes' values are combined by their maximum).
LAG = Gauge(
    "kafka_consumer_lag",
    "Records not yet consumed on a partition, as its group member saw them last",
    ["topic", "partition"],
    multiprocess_mode="max",
)


def client_config(kafka: Kafka) -> dict[str, Any]:
    """How a client (producer, consumer, admin) reaches the brokers and who it is there: the
    bootstrap servers, and per KAFKA_SECURITY_PROTOCOL TLS (trusting KAFKA_CA_FILE, the broker's
    host name checked: librdkafka's default) and SASL as KAFKA_USER. Errors (a refused
    password, a failed TLS handshake) are logged naming the account, never its password."""
    protocol = kafka.security_protocol
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.brokers,
        "security.protocol": protocol.lower(),
        "error_cb": ErrorReport(kafka),
    }
    if protocol.startswith("SASL_"):
        config |= {
            "sasl.mechanism": kafka.sasl_mechanism,
            "sasl.username": kafka.user,
            "sasl.password": kafka.password,
        }
    if protocol.endswith("SSL") and kafka.ca_file:
        config["ssl.ca.location"] = kafka.ca_file
    return config


# The services' principals (SCRAM user names) on brokers that authenticate: every layout's
# set-up makes them and gives them the ACLs below (devstack, docker-compose.yml, the chart).
ORDERS_PRINCIPAL, PRODUCTS_PRINCIPAL = "orders", "products"


def acls(kafka: Kafka) -> list[AclBinding]:
    """What each service's principal may do on the topics and the group `kafka` names: the
    order service (intake, its consumers, its outbox relay) writes order commands, order
    events and dead letters, and reads order commands in its group; the product service writes
    product events. WRITE and CREATE (topics are made on first use) with DESCRIBE; READ of
    a topic and of the group for the consumer. Literal names only: nothing matches a prefix."""
    write = (AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.CREATE)
    grants: list[tuple[str, ResourceType, str, tuple[AclOperation, ...]]] = [
        (ORDERS_PRINCIPAL, ResourceType.TOPIC, kafka.topic, (*write, AclOperation.READ)),
        (ORDERS_PRINCIPAL, ResourceType.TOPIC, kafka.order_events_topic, write),
        (ORDERS_PRINCIPAL, ResourceType.TOPIC, kafka.dlq_topic, write),
        (ORDERS_PRINCIPAL, ResourceType.GROUP, kafka.consumer_group, (AclOperation.READ,)),
        (PRODUCTS_PRINCIPAL, ResourceType.TOPIC, kafka.product_events_topic, write),
    ]
    literal, allow = ResourcePatternType.LITERAL, AclPermissionType.ALLOW
    return [
        AclBinding(kind, name, literal, f"User:{principal}", "*", operation, allow)
        for principal, kind, name, operations in grants
        for operation in operations
    ]


_FAILURES = {
    KafkaError._AUTHENTICATION: ("SASL authentication failed", "KAFKA_USER and KAFKA_PASSWORD"),
    KafkaError._SSL: ("TLS failed", "KAFKA_CA_FILE and KAFKA_BROKERS' host names"),
}


class ErrorReport:
    """librdkafka's error callback: one log line per kind of error and 30 s (it reports every
    reconnect), naming the account and what to check. `refused` holds the last refusal of the
    credentials (for `/readyz`'s log) until `clear()`."""

    def __init__(self, kafka: Kafka) -> None:
        self._who = (
            f"as {kafka.user!r} ({kafka.sasl_mechanism} over {kafka.security_protocol})"
            if kafka.security_protocol.startswith("SASL_")
            else f"over {kafka.security_protocol}"
        )
        self.refused: str | None = None

    def __call__(self, err: KafkaError) -> None:
        code = err.code()
        if code == KafkaError._AUTHENTICATION:
            self.refused = f"Kafka refused the credentials {self._who}"
        if code in _FAILURES:
            failed, check = _FAILURES[code]
            _client_errors.error("kafka: %s %s; check %s: %s", failed, self._who, check, err.str())
        else:
            _client_errors.warning("kafka: %s %s: %s", err.name(), self._who, err.str())


def producer_config(kafka: Kafka, *, delivery_timeout: float) -> dict[str, Any]:
    """An idempotent producer (acks=all) whose failures surface within `delivery_timeout`.

    `linger.ms` 5 (librdkafka's default): under load the messages of 5 ms share a produce
    request. With 1 ms, Kafka spent 0.6 ms of CPU per intake order on request handling (as
    much as the order service); with 5 ms, 0.1 ms. A lone message waits at most 5 ms more.
    """
    return {
        **_our_client(kafka),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": int(delivery_timeout * 1000),
        "socket.timeout.ms": 5000,
        "reconnect.backoff.max.ms": 1000,
    }


def _once_per(seconds: float) -> Callable[[logging.LogRecord], bool]:
    """A log filter that lets a repeated librdkafka line through once per `seconds`: during a
    broker outage it reports every reconnect attempt, several a second."""
    last: dict[str, float] = {}

    def once(record: logging.LogRecord) -> bool:
        head = record.getMessage()[:80]
        now = time.monotonic()
        if now - last.get(head, -seconds) < seconds:
            return False
        last[head] = now
        return True

    return once


_rdkafka_log = logging.getLogger("librdkafka")
_rdkafka_log.addFilter(_once_per(30.0))
_client_errors = logging.getLogger(f"{__name__}.client")
_client_errors.addFilter(_once_per(30.0))


_LOGGING = {"logger": _rdkafka_log, "log_level": 3, "log.connection.close": False}


def _our_client(kafka: Kafka) -> dict[str, Any]:
    """`client_config` with librdkafka's logs (errors and worse) through Python logging."""
    return {**client_config(kafka), **_LOGGING}


class KafkaPublisher:
    """Publishes messages and awaits their delivery reports.

    produce() itself never blocks; delivery reports arrive through poll(), which a daemon
    thread calls. The reports of one poll() go back to the event loop in one
    call_soon_threadsafe: one loop wake-up per poll, not per message (py-spy showed the
    per-message hand-over costing a quarter of the intake path).
    """

    def __init__(self, kafka: Kafka, *, delivery_timeout: float) -> None:
        config = producer_config(kafka, delivery_timeout=delivery_timeout)
        self._errors: ErrorReport = config["error_cb"]
        self._producer = Producer(config)
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

    def topic(self, name: str) -> KafkaTopic:
        """The outbound port for one topic, through this producer."""
        return KafkaTopic(self, name)

    async def publish_many(
        self, topic: str, messages: Sequence[Outgoing], *, timeout: float
    ) -> None:
        """Send messages (in order, per key) and wait until every one is acknowledged.

        One future for all of them, settled by the last delivery report: a future and a
        callback object per message were half of an outbox relay's CPU per event.
        """
        loop = self._loop = asyncio.get_running_loop()
        delivery = _Delivery(self, loop.create_future(), len(messages))
        for key, value, headers in messages:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=dict(headers) if headers else None,
                    on_delivery=delivery.report,
                )
            except (BufferError, KafkaException) as exc:
                delivery.future.cancel()
                raise PublishError(f"could not queue message for {topic}: {exc}") from exc
        try:
            async with asyncio.timeout(timeout):
                await delivery.future
        except TimeoutError as exc:
            raise PublishError(f"no acknowledgement from Kafka within {timeout:.1f}s") from exc

    async def check(self, timeout: float) -> None:
        """Raise unless a broker answers a metadata request within `timeout` seconds; at once
        (after a short try) while the brokers refuse our credentials."""
        if self._stopping.is_set():
            raise ConnectionError("the Kafka producer is closed")
        wait = min(timeout, 1.0) if self._errors.refused else timeout
        try:
            await asyncio.to_thread(self._producer.list_topics, timeout=wait)
        except KafkaException:
            if refused := self._errors.refused:
                raise PermissionError(refused) from None
            raise
        self._errors.refused = None

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the poll thread, then deliver what is queued (up to `timeout`); once."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        await asyncio.to_thread(self._poller.join, 2.0)
        remaining = await asyncio.to_thread(self._producer.flush, timeout)
        self._hand_over()
        if remaining:
            log.warning("kafka producer closed with %d undelivered messages", remaining)


class KafkaTopic:
    """The outbound port on one Kafka topic; a message's key picks its partition."""

    def __init__(self, publisher: KafkaPublisher, name: str) -> None:
        self.name = name
        # `publish` is the publisher's coroutine itself: no extra frame on the intake path.
        self.publish = partial(publisher.publish_many, name)


class _Delivery:
    """The delivery reports of one publish_many: its future is settled once every message has
    been reported, with the first error if any was refused."""

    __slots__ = ("_error", "_left", "_publisher", "future")

    def __init__(self, publisher: KafkaPublisher, future: asyncio.Future[None], count: int) -> None:
        self._publisher = publisher
        self.future = future
        self._left = count
        self._error: KafkaError | None = None

    def report(self, err: KafkaError | None, _msg: Any) -> None:
        # Runs in whichever thread called poll() or flush() (one at a time: the poll thread
        # stops before close() flushes); list.append is atomic under the GIL.
        if err is not None and self._error is None:
            self._error = err
        self._left -= 1
        if self._left == 0:
            self._publisher._reports.append((self.future, self._error))


def _settle_all(reports: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    for fut, err in reports:
        if fut.done():
            continue
        if err is None:
            fut.set_result(None)
        else:
            fut.set_exception(PublishError(str(err)))


def topic_config(replication_factor: int) -> dict[str, str]:
    """A topic's durability: with acks=all a write needs `min.insync.replicas` copies (one
    fewer than all, so one broker may be down), and a replica that missed writes never leads."""
    return {
        "min.insync.replicas": str(max(1, replication_factor - 1)),
        "unclean.leader.election.enable": "false",
    }


async def ensure_topics(
    kafka: Kafka,
    topics: Sequence[str],
    *,
    replication_factor: int | None = None,
    timeout: float = 5.0,
) -> None:
    """Create the topics that do not exist yet, with 4 partitions and `replication_factor`
    copies each (KAFKA_REPLICATION_FACTOR by default)."""
    copies = kafka.replication_factor if replication_factor is None else replication_factor

    def _create() -> None:
        admin = AdminClient(_our_client(kafka))
        existing = admin.list_topics(timeout=timeout).topics
        config = topic_config(copies)
        missing = [NewTopic(t, 4, copies, config=config) for t in topics if t not in existing]
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


async def ensure_topics_best_effort(
    _stopping: asyncio.Event, *, kafka: Kafka, topics: Sequence[str]
) -> None:
    """`ensure_topics` as a background task that only warns: the broker also creates topics on
    first use, and publishers retry."""
    try:
        await ensure_topics(kafka, topics)
    except Exception as exc:
        log.warning("could not ensure kafka topics %s: %s", topics, exc)


def consumer_config(kafka: Kafka, *, group: str) -> dict[str, Any]:
    """A group member that stores offsets only when told (after the batch is handled).

    Stored offsets are committed by the auto-committer every second and on close: after a
    crash, at most that much is delivered again (and skipped as already stored).
    `fetch.wait.max.ms` bounds how long an idle fetch is parked at the broker, which also
    bounds how late a partition assignment or a reconnect shows up in the next fetch.
    """
    return {
        **_our_client(kafka),
        "group.id": group,
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 1000,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1000,
        "fetch.wait.max.ms": 100,
    }


class KafkaDelivery(NamedTuple):
    """A consumed record: its value as `body`, the record itself for offsets and the DLQ."""

    body: bytes
    message: Message


class KafkaInbound:
    """The inbound port on a Kafka topic, as one member of a consumer group.

    librdkafka's consumer calls block and the consumer is not safe to call from two threads,
    so every call runs on one dedicated thread. Offsets are stored (never lowered) only when a
    delivery is acked or dead-lettered; a dead letter is confirmed by the DLQ topic first.
    """

    def __init__(self, settings: Kafka, *, dlq: KafkaTopic) -> None:
        self._topic = topic = settings.topic
        self._dlq = dlq
        self._dlq_timeout = settings.dlq_timeout_seconds
        self._lag_timeout = settings.lag_timeout_seconds
        self._consumer = Consumer(consumer_config(settings, group=settings.consumer_group))
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-consumer-{topic}")
        self._subscribed = False
        self._closed = False
        self._stored: dict[tuple[str, int], int] = {}  # the next offset stored, per partition
        self._lag_shown: set[tuple[str, int]] = set()  # partitions whose lag the gauge shows

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, partial(fn, *args, **kwargs))

    async def take(self, max_messages: int, timeout: float) -> list[KafkaDelivery]:
        messages = await self._call(self._take, max_messages, timeout)
        batch = []
        for message in messages:
            err = message.error()
            if err is None:
                batch.append(KafkaDelivery(message.value() or b"", message))
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka consumer error on %s: %s", self._topic, err)
        return batch

    def _forget(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Runs on the consumer thread, inside consume(): a partition that comes back later
        # starts from its committed offset, whatever this member stored before.
        for tp in partitions:
            self._stored.pop((tp.topic, tp.partition), None)

    def _take(self, max_messages: int, timeout: float) -> list[Message]:
        if not self._subscribed:
            self._consumer.subscribe([self._topic], on_revoke=self._forget, on_lost=self._forget)
            self._subscribed = True
        # consume(n, t) waits for n messages or the whole of t: at idle a lone order would
        # wait out the timeout. So: what is already fetched; else the first message as soon
        # as it comes, plus whatever arrived with it.
        messages: list[Message] = self._consumer.consume(max_messages, 0)
        if not messages:
            messages = self._consumer.consume(1, timeout)
            if messages and max_messages > 1:
                messages.extend(self._consumer.consume(max_messages - 1, 0))
        return messages

    async def dead_letter(self, delivery: KafkaDelivery, reason: str) -> None:
        message = delivery.message
        source = f"{message.topic()}:{message.partition()}:{message.offset()}"
        key = (message.key() or b"").decode(errors="replace")
        dead = Outgoing(key, delivery.body, {"reason": reason, "source": source})
        await self._dlq.publish([dead], timeout=self._dlq_timeout)
        await self.ack([delivery])

    async def ack(self, deliveries: Sequence[KafkaDelivery]) -> None:
        # Never lower a stored offset: a dead letter may be settled before the older
        # deliveries of its partition are acked.
        stored, changed = self._stored, {}
        for delivery in deliveries:
            message = delivery.message
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue
            if offset + 1 > stored.get((topic, partition), -1):
                stored[topic, partition] = changed[topic, partition] = offset + 1
        if changed:
            offsets = [TopicPartition(t, p, o) for (t, p), o in changed.items()]
            try:
                await self._call(self._consumer.store_offsets, offsets=offsets)
            except KafkaException as exc:
                # The partition moved to another member during a rebalance: it will process
                # these again, and skip the orders we stored.
                log.warning("could not store offsets on %s: %s", self._topic, exc)

    def header(self, delivery: KafkaDelivery, name: str) -> str | bytes | None:
        headers = delivery.message.headers() or ()  # (a list of pairs, as librdkafka reads them)
        pairs = headers.items() if isinstance(headers, dict) else headers
        return next((value for key, value in pairs if key == name), None)

    async def depth(self) -> int:
        """Messages not yet consumed on the partitions this member holds.

        A partition this member has consumed nothing from since it got it has no position yet:
        it resumes at the group's committed offset (or, with none, at the earliest one), so
        that is where its lag counts from, not from offset 0 (which counted every record the
        topic still holds: 241,580 of them, on a group that was fully caught up).
        """

        def _lag() -> int:
            consumer = self._consumer
            assigned = consumer.assignment()
            positions = consumer.position(assigned) if assigned else []
            unknown = [tp for tp in positions if tp.offset < 0]
            asked = consumer.committed(unknown, timeout=self._lag_timeout) if unknown else []
            committed = {(tp.topic, tp.partition): tp.offset for tp in asked}
            lags = {}
            for tp in positions:
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                at = tp.offset if tp.offset >= 0 else committed.get((tp.topic, tp.partition), -1)
                lags[tp.topic, tp.partition] = max(0, high - (at if at >= 0 else max(low, 0)))
            for topic, partition in self._lag_shown | lags.keys():  # 0: given up since
                LAG.labels(topic, str(partition)).set(lags.get((topic, partition), 0))
            self._lag_shown = set(lags)
            return sum(lags.values())

        return await self._call(_lag)

    async def close(self) -> None:
        """Commit what was stored, leave the group, stop the thread; once."""
        if self._closed:
            return
        self._closed = True
        await self._call(self._consumer.close)
        self._thread.shutdown(wait=True)


class KafkaBroker:
    """The order commands on Kafka: the `Broker` port over one intake producer, the group's
    consumers, and a dead-letter topic published through `dead_letters`' producer.

    The intake producer's delivery timeout is the intake's 503 deadline, so librdkafka stops
    retrying about when the client is told 503. It cannot take back a message a stalled broker
    already wrote: a retry after 503 is safe with an Idempotency-Key.
    """

    name = "kafka"

    def __init__(self, settings: Kafka, *, dead_letters: KafkaTopic, deadline: float) -> None:
        self._settings, self._dead_letters = settings, dead_letters
        self._intake = KafkaPublisher(settings, delivery_timeout=deadline)
        self.check = self._intake.check  # readiness: the intake producer reaches a broker
        self._inbound: list[KafkaInbound] = []
        self._tasks = Supervisor()

    def start(self) -> None:
        topics = [self._settings.topic, self._dead_letters.name]
        ensure = partial(ensure_topics_best_effort, kafka=self._settings, topics=topics)
        self._tasks.start("kafka-ensure-topics", ensure)

    def publisher(self) -> KafkaTopic:
        return self._intake.topic(self._settings.topic)

    def consumer(self, batch_size: int) -> KafkaInbound:
        inbound = KafkaInbound(self._settings, dlq=self._dead_letters)
        self._inbound.append(inbound)
        return inbound

    async def close(self) -> None:
        """Commit the consumers' stored offsets and leave the group, then flush the intake."""
        await self._tasks.stop(timeout=self._settings.close_seconds)
        for inbound in self._inbound:
            await inbound.close()
        await self._intake.close(timeout=self._settings.close_seconds)
