"""The two ASGI applications, wired from the settings in their lifespans."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Table

from shop import http, logs
from shop.brokers.kafka import KafkaPublisher, ensure_topics
from shop.db import Database, create_engine
from shop.orders import api as order_api
from shop.orders.service import OrderService
from shop.orders.tables import order_outbox
from shop.outbox import Relay
from shop.products import api as product_api
from shop.products.service import ProductService
from shop.products.tables import product_outbox
from shop.settings import Settings, load_settings
from shop.tasks import Supervisor

log = logging.getLogger(__name__)


class Runtime:
    """What a service process holds open: database, Kafka producer, outbox relay, tasks."""

    def __init__(self, settings: Settings, *, outbox: Table, events_topic: str) -> None:
        self.settings = settings
        self.db = Database(create_engine(settings), timeout=settings.db_timeout_seconds)
        self.kafka = KafkaPublisher(settings.kafka_brokers, delivery_timeout=10.0)
        self.relay = Relay(
            engine=self.db.engine,
            table=outbox,
            publisher=self.kafka,
            topic=events_topic,
            batch_size=settings.outbox_batch_size,
            poll_seconds=settings.outbox_poll_seconds,
            publish_timeout=11.0,
        )
        self.events_topic = events_topic
        self.supervisor = Supervisor()

    def start(self) -> None:
        self.supervisor.start("ensure-topics", self._ensure_topics)
        self.supervisor.start("outbox-relay", self.relay.run)

    async def _ensure_topics(self, stopping: object) -> None:
        # Best effort: the broker also creates topics on first use, and the relay retries.
        try:
            await ensure_topics(self.settings.kafka_brokers, [self.events_topic])
        except Exception as exc:
            log.warning("could not ensure kafka topic %s: %s", self.events_topic, exc)

    def checks(self) -> Mapping[str, http.HealthCheck]:
        return {
            "database": self.db.ping,
            "kafka": lambda: self.kafka.check(timeout=self.settings.db_timeout_seconds),
        }

    async def close(self) -> None:
        await self.supervisor.stop(timeout=5.0)
        await self.kafka.close(timeout=5.0)
        await self.db.engine.dispose()


def _app(title: str, service: str, settings: Settings, runtime: Runtime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        log.info("%s service ready on port %s", service, _port(settings, service))
        try:
            yield
        finally:
            await runtime.close()
            log.info("%s service stopped", service)

    app = FastAPI(
        title=title, version="0.1.0", lifespan=lifespan, default_response_class=http.JSONResponse
    )
    http.install(app, service=service, max_body_bytes=settings.max_body_bytes)
    app.include_router(http.health_router(runtime.checks, timeout=settings.db_timeout_seconds))
    return app


def _port(settings: Settings, service: str) -> int:
    return settings.product_service_port if service == "products" else settings.order_service_port


def products_app(settings: Settings | None = None) -> FastAPI:
    """The product service (port 8080)."""
    settings = settings or load_settings()
    logs.configure(settings.log_level)
    runtime = Runtime(
        settings, outbox=product_outbox, events_topic=settings.kafka_product_events_topic
    )
    app = _app("Product service", "products", settings, runtime)
    app.include_router(
        product_api.router(ProductService(runtime.db, on_event=runtime.relay.notify))
    )
    return app


def orders_app(settings: Settings | None = None) -> FastAPI:
    """The order service (port 8081)."""
    settings = settings or load_settings()
    logs.configure(settings.log_level)
    runtime = Runtime(settings, outbox=order_outbox, events_topic=settings.kafka_order_events_topic)
    app = _app("Order service", "orders", settings, runtime)
    app.include_router(
        order_api.router(OrderService(runtime.db, publishers={}, on_event=runtime.relay.notify))
    )
    return app
