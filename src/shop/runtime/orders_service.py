"""The order service's composition root: its app (port 8081) and its consumers without HTTP
(`shop consume`), wired from the settings."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from functools import partial

import uvicorn
from fastapi import FastAPI

from shop import tracing
from shop.access import verifier as auth
from shop.access.rate_limit import OrderLimits
from shop.messaging.kafka import KafkaBroker
from shop.messaging.ports import Broker
from shop.messaging.rabbitmq import RabbitBroker
from shop.orders import api as order_api
from shop.orders.command_publisher import BrokerCommands, by_order, by_product
from shop.orders.consumer import run_order_consumer, watch_depth
from shop.orders.prices import Prices
from shop.orders.service import OrderService
from shop.orders.store import SqlOrderStore
from shop.orders.tables import order_keys, order_outbox
from shop.runtime import gc_tuning as heap
from shop.runtime import logs
from shop.runtime.composition import Runtime, service_app
from shop.runtime.consumer_process import die_with_parent
from shop.settings import Settings, load_settings
from shop.storage import write_counter as generation
from shop.web import health, openapi

log = logging.getLogger(__name__)

# Per channel: the broker's name in a 503's text, and a command's key (Kafka: its partition).
COMMANDS = {"kafka": ("Kafka", by_product), "rabbitmq": ("RabbitMQ", by_order)}


class OrderRuntime(Runtime):
    """The order service's extras: a broker per asynchronous channel, and the consumers of
    the channels named in `consumers`. Without `intake` (a process that only consumes), no
    connection to publish order commands is made, nor intake's account used."""

    def __init__(
        self, settings: Settings, consumers: Collection[str], *, intake: bool = True
    ) -> None:
        s = settings
        super().__init__(
            s, outbox=order_outbox, keys=order_keys, events_topic=s.kafka.order_events_topic
        )
        deadline = s.orders.broker_deadline_seconds
        self.brokers = [
            KafkaBroker(
                s.kafka, dead_letters=self.kafka.topic(s.kafka.dlq_topic), deadline=deadline
            ),
            RabbitBroker(s.rabbitmq, timeout=deadline, intake=intake),
        ]
        self.service = OrderService(
            SqlOrderStore(self.db),
            prices=Prices(self.db, s.orders),
            publishers={broker.name: _commands(broker, s) for broker in self.brokers},
            on_event=self.relay.notify,
            settings=s.orders,
        )
        self.consumers = consumers

    def start(self) -> None:
        super().start()
        self.supervisor.start("sync-orders", self.service.run_sync_orders)
        orders = self.settings.orders
        consume = partial(run_order_consumer, service=self.service, settings=orders)
        for broker in self.brokers:
            if broker.name in self.consumers:
                inbound, channel = broker.consumer(orders.consumer_batch_size), broker.name
                run = partial(consume, channel=channel, inbound=inbound)
                self.supervisor.start(f"{channel}-consumer", run)
                every = orders.consumer_depth_seconds
                depth = partial(watch_depth, channel=channel, depth=inbound.depth, every=every)
                self.supervisor.start(f"{channel}-depth", depth)


def _commands(broker: Broker, s: Settings) -> BrokerCommands:
    title, key = COMMANDS[broker.name]
    return BrokerCommands(broker.publisher(), broker=title, key=key, settings=s.orders)


def orders_app(settings: Settings | None = None) -> FastAPI:
    """The order service (port 8081), with both consumers unless CONSUMERS_ENABLED=false."""
    die_with_parent()
    settings = settings or load_settings()
    logs.configure(settings.log_level)
    tracing.configure(settings.tracing, "order-service")
    authenticator = auth.from_settings(settings)
    # In a table the service's workers share if it has several.
    buckets = generation.worker_file("order-limits.buckets")
    limits = OrderLimits(settings.orders, slots=settings.http.rate_limit_slots, path=buckets)
    runtime = OrderRuntime(settings, tuple(COMMANDS) if settings.orders.consumers_enabled else ())
    app = service_app(
        "Order service",
        "orders",
        runtime,
        order_api.lean_routes(runtime.service, authenticator, limits),
        authenticator.refresh_keys,
    )
    app.include_router(order_api.router(runtime.service, authenticator, limits))
    openapi.amend(app, partial(order_api.document_quantity, most=settings.orders.max_quantity))
    openapi.amend(app, partial(order_api.document_limits, orders=settings.orders))
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
    tracing.configure(settings.tracing, "order-consumer")
    runtime = OrderRuntime(settings, channels, intake=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runtime.start()
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
