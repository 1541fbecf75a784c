"""The two ASGI applications and the standalone consumer, wired from the settings."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Table

from shop.access import verifier as auth
from shop.access.rate_limit import RateLimiter
from shop.messaging.kafka import KafkaInbound, KafkaPublisher, ensure_topics
from shop.messaging.ports import D, Inbound
from shop.messaging.rabbitmq import RabbitInbound, RabbitPublisher
from shop.orders import api as order_api
from shop.orders.command_publisher import BrokerCommands, by_order, by_product
from shop.orders.consumer import run_order_consumer, watch_depth
from shop.orders.service import OrderService
from shop.orders.tables import order_keys, order_outbox
from shop.products import api as product_api
from shop.products.service import ProductService
from shop.products.tables import product_idempotency, product_outbox
from shop.runtime import gc_tuning as heap
from shop.runtime import logs
from shop.runtime.consumer_process import die_with_parent
from shop.runtime.supervision import Supervisor
from shop.settings import Settings, load_settings
from shop.storage import write_counter as generation
from shop.storage.database import Database
from shop.storage.expiry import Expiry
from shop.storage.outbox import Relay
from shop.web import app_factory, health, openapi
from shop.web.fastpath.routes import LeanRoute

log = logging.getLogger(__name__)

CHANNELS = ("kafka", "rabbitmq")
SHUTDOWN_SECONDS = 5.0


class Runtime:
    """What a service process holds open: database, Kafka producer, outbox relay, tasks."""

    def __init__(
        self,
        settings: Settings,
        *,
        outbox: Table,
        keys: Table,
        events_topic: str,
        other_topics: Collection[str] = (),
    ) -> None:
        self.settings = settings
        self.db = Database.connect(settings)
        self.kafka = KafkaPublisher(settings.kafka.brokers, delivery_timeout=10.0)
        self.topics = [events_topic, *other_topics]
        # Commits are counted across the service's processes, so that the process that relays
        # sees its siblings' commits too.
        self.commits = generation.for_workers(f"{outbox.name}-commits")
        self.relay = Relay(
            engine=self.db.engine,
            table=outbox,
            publisher=self.kafka.topic(events_topic),
            batch_size=settings.outbox.batch_size,
            poll_seconds=settings.outbox.poll_seconds,
            publish_timeout=11.0,
            retention_seconds=settings.outbox.retention_seconds,
            commits=self.commits,
        )
        self.expired_keys = Expiry(
            self.db.engine,
            keys,
            keys.c.created_at,
            ttl_seconds=settings.outbox.key_ttl_seconds,
        )
        self.supervisor = Supervisor()

    def start(self) -> None:
        self.supervisor.start("ensure-topics", self._ensure_topics)
        if self.settings.outbox.relay_enabled:
            self.supervisor.start("outbox-relay", self.relay.run)
            self.supervisor.start("outbox-purge", self.relay.purge)
            # Where the relay runs, once per service: the keys' purge.
            self.supervisor.start("expired-keys-purge", self.expired_keys.run)

    async def _ensure_topics(self, stopping: asyncio.Event) -> None:
        # Best effort: the broker also creates topics on first use, and the relay retries.
        try:
            await ensure_topics(
                self.settings.kafka.brokers,
                self.topics,
                replication_factor=self.settings.kafka.replication_factor,
            )
        except Exception as exc:
            log.warning("could not ensure kafka topics %s: %s", self.topics, exc)

    def checks(self) -> Mapping[str, health.HealthCheck]:
        return {
            "database": self.db.ping,
            "kafka": partial(self.kafka.check, timeout=self.settings.db.timeout_seconds),
        }

    async def close(self) -> None:
        await self.supervisor.stop(timeout=SHUTDOWN_SECONDS)
        await self.kafka.close(timeout=SHUTDOWN_SECONDS)
        await self.db.dispose()
        self.commits.close()


class OrderRuntime(Runtime):
    """The order service's extras: intake producers, RabbitMQ, and the consumers."""

    def __init__(self, settings: Settings) -> None:
        s = settings
        super().__init__(
            s,
            outbox=order_outbox,
            keys=order_keys,
            events_topic=s.kafka.order_events_topic,
            other_topics=[s.kafka.topic, s.kafka.dlq_topic],
        )
        # Intake has its own producer whose delivery timeout is the 503 deadline, so librdkafka
        # stops retrying about when the client is told 503. It cannot take back a message a
        # stalled broker already wrote: a retry after 503 is safe with an Idempotency-Key.
        self.intake = KafkaPublisher(
            s.kafka.brokers, delivery_timeout=s.orders.broker_deadline_seconds
        )
        self.rabbit = RabbitPublisher(
            s.rabbitmq.url,
            queue=s.rabbitmq.queue,
            timeout=s.orders.broker_deadline_seconds,
            queue_type=s.rabbitmq.queue_type,
            delivery_limit=s.rabbitmq.delivery_limit,
        )
        deadline = s.orders.broker_deadline_seconds
        self.service = OrderService(
            self.db,
            publishers={
                "kafka": BrokerCommands(
                    self.intake.topic(s.kafka.topic),
                    broker="Kafka",
                    deadline=deadline,
                    key=by_product,
                ),
                "rabbitmq": BrokerCommands(
                    self.rabbit.to_queue(), broker="RabbitMQ", deadline=deadline, key=by_order
                ),
            },
            on_event=self.relay.notify,
            sync_queue_limit=s.orders.sync_queue_limit,
            max_quantity=s.orders.max_quantity,
        )
        self._kafka_inbound: KafkaInbound | None = None
        self._rabbit_inbound: RabbitInbound | None = None

    def start_with(self, consumers: Collection[str]) -> None:
        """Start the relay, the RabbitMQ connection and the named consumers."""
        s = self.settings
        self.start()
        self.supervisor.start("sync-orders", self.service.run_sync_orders)
        self.supervisor.start("rabbitmq-publisher", self.rabbit.connect_forever)
        if "kafka" in consumers:
            self._kafka_inbound = KafkaInbound(
                s.kafka.brokers,
                topic=s.kafka.topic,
                group=s.kafka.consumer_group,
                dlq=self.kafka.topic(s.kafka.dlq_topic),
            )
            self._start_consumer("kafka", self._kafka_inbound)
        if "rabbitmq" in consumers:
            self._rabbit_inbound = RabbitInbound(
                s.rabbitmq.url,
                queue=s.rabbitmq.queue,
                prefetch=s.orders.consumer_batch_size,
                timeout=s.orders.broker_deadline_seconds,
                dlq=self.rabbit.to_dead_letters(),
                queue_type=s.rabbitmq.queue_type,
                delivery_limit=s.rabbitmq.delivery_limit,
            )
            self.supervisor.start(
                "rabbitmq-consumer-connection", self._rabbit_inbound.consume_forever
            )
            self._start_consumer("rabbitmq", self._rabbit_inbound)

    def _start_consumer(self, channel: str, inbound: Inbound[D]) -> None:
        async def consume(stopping: asyncio.Event) -> None:
            await run_order_consumer(
                stopping,
                channel=channel,
                inbound=inbound,
                service=self.service,
                batch_size=self.settings.orders.consumer_batch_size,
            )

        self.supervisor.start(f"{channel}-consumer", consume)
        self.supervisor.start(
            f"{channel}-depth", partial(watch_depth, channel=channel, depth=inbound.depth)
        )

    def checks(self) -> Mapping[str, health.HealthCheck]:
        return {**super().checks(), "rabbitmq": self.rabbit.check}

    async def close(self) -> None:
        # Consumers finish their batch and stop first; then offsets are committed, connections
        # closed and producers flushed.
        await self.supervisor.stop(timeout=SHUTDOWN_SECONDS)
        if self._kafka_inbound is not None:
            await self._kafka_inbound.close()
        if self._rabbit_inbound is not None:
            await self._rabbit_inbound.close()
        await self.rabbit.close()
        await self.intake.close(timeout=2.0)
        await super().close()


def _app(
    title: str,
    service: str,
    settings: Settings,
    runtime: Runtime,
    start: partial[None],
    lean: Sequence[LeanRoute[Any]],
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        start()
        log.info("%s service started", service)
        try:
            yield
        finally:
            await runtime.close()
            log.info("%s service stopped", service)

    app = app_factory.new_app(
        title,
        service=service,
        http=settings.http,
        lifespan=lifespan,
        lean=lean,
    )
    app.include_router(health.health_router(runtime.checks, timeout=settings.db.timeout_seconds))
    return app


def products_app(settings: Settings | None = None) -> FastAPI:
    """The product service (port 8080)."""
    die_with_parent()
    settings = settings or load_settings()
    logs.configure(settings.log_level)
    runtime = Runtime(
        settings,
        outbox=product_outbox,
        keys=product_idempotency,
        events_topic=settings.kafka.product_events_topic,
    )
    service = ProductService(
        runtime.db,
        on_event=runtime.relay.notify,
        list_cache_seconds=settings.products.cache_seconds,
        list_cache_bytes=settings.products.cache_bytes,
        writes=generation.for_workers("product-pages"),
    )
    app = _app(
        "Product service",
        "products",
        settings,
        runtime,
        partial(runtime.start),
        product_api.lean_routes(service),
    )
    app.include_router(product_api.router(service, auth.from_settings(settings)))
    return app


def orders_app(settings: Settings | None = None) -> FastAPI:
    """The order service (port 8081), with both consumers unless CONSUMERS_ENABLED=false."""
    die_with_parent()
    settings = settings or load_settings()
    logs.configure(settings.log_level)
    authenticator = auth.from_settings(settings)
    limiter = RateLimiter(rate=settings.orders.rate_per_second, burst=settings.orders.burst)
    runtime = OrderRuntime(settings)
    consumers = CHANNELS if settings.orders.consumers_enabled else ()
    app = _app(
        "Order service",
        "orders",
        settings,
        runtime,
        partial(runtime.start_with, consumers),
        order_api.lean_routes(runtime.service, authenticator, limiter),
    )
    app.include_router(order_api.router(runtime.service, authenticator, limiter))
    openapi.amend(app, partial(order_api.document_quantity, most=settings.orders.max_quantity))
    return app


class _HealthServer(uvicorn.Server):
    """uvicorn on the consumer's own loop: the consumer, not uvicorn, handles SIGTERM/SIGINT."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _health_server(settings: Settings, runtime: OrderRuntime, port: int) -> _HealthServer:
    """`/healthz`, `/readyz` (database, Kafka, RabbitMQ) and `/metrics` of a consumer process,
    for an orchestrator's probes (the Helm chart's consumers Deployment)."""
    app = FastAPI(title="Order consumers", openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(health.health_router(runtime.checks, timeout=settings.db.timeout_seconds))
    config = uvicorn.Config(
        app,
        host=settings.http.bind_host,
        port=port,
        loop="none",
        lifespan="off",
        access_log=False,
        log_config=None,
    )
    return _HealthServer(config)


async def consume(
    settings: Settings, channels: Collection[str], *, health_port: int | None = None
) -> None:
    """Run consumers (and the order outbox relay) without HTTP until SIGTERM or SIGINT; with a
    `health_port`, answer health checks there."""
    logs.configure(settings.log_level)
    runtime = OrderRuntime(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runtime.start_with(channels)
    health = None if health_port is None else _health_server(settings, runtime, health_port)
    serving = None if health is None else asyncio.create_task(health.serve())
    heap.settle()
    log.info("%s consumer started", "+".join(channels))
    try:
        await stop.wait()
    finally:
        if health is not None and serving is not None:
            health.should_exit = True
            await serving
        await runtime.close()
        log.info("%s consumer stopped", "+".join(channels))
