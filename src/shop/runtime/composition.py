"""What both services' composition roots share: the runtime a service process holds open, and
the app around it. Each service is wired in its own module (`products_service`, `orders_service`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Table

from shop import tracing
from shop.messaging.kafka import KafkaPublisher, ensure_topics_best_effort
from shop.messaging.ports import Broker
from shop.runtime import gc_tuning as heap
from shop.settings import Settings
from shop.storage import write_counter as generation
from shop.storage.database import Database
from shop.storage.expiry import Expiry
from shop.storage.outbox import Relay
from shop.supervision import Supervisor, Worker
from shop.web import app_factory, health
from shop.web.fastpath.routes import LeanRoute

log = logging.getLogger(__name__)


class Runtime:
    """What a service process holds open: database, Kafka events producer, outbox relay, tasks,
    and the brokers its subclass adds (started, checked and closed in turn)."""

    def __init__(
        self, settings: Settings, *, outbox: Table, keys: Table, events_topic: str
    ) -> None:
        self.settings = settings
        self.db = Database.connect(settings)
        self.kafka = KafkaPublisher(
            settings.kafka, delivery_timeout=settings.kafka.delivery_timeout_seconds
        )
        self.events_topic = events_topic
        # Commits are counted across the service's processes, so that the process that relays
        # sees its siblings' commits too.
        self.commits = generation.for_workers(f"{outbox.name}-commits")
        self.relay = Relay(
            engine=self.db.engine,
            table=outbox,
            publisher=self.kafka.topic(events_topic),
            outbox=settings.outbox,
            commits=self.commits,
        )
        ttl = settings.outbox.key_ttl_seconds
        self.expired_keys = Expiry(
            self.db.engine, keys.c.created_at, ttl_seconds=ttl, outbox=settings.outbox
        )
        self.supervisor = Supervisor()
        self.brokers: list[Broker] = []

    def start(self) -> None:
        ensure = partial(
            ensure_topics_best_effort, kafka=self.settings.kafka, topics=[self.events_topic]
        )
        self.supervisor.start("ensure-topics", ensure)
        self.supervisor.start("span-export", tracing.ship)  # (returns at once: tracing off)
        warm = partial(self.db.warm_up, connections=self.settings.db.warm_connections)
        self.supervisor.start("database-warm-up", warm)
        if self.settings.outbox.relay_enabled:
            self.supervisor.start("outbox-relay", self.relay.run)
            self.supervisor.start("outbox-backlog", self.relay.watch)
            self.supervisor.start("outbox-purge", self.relay.published.run)
            # Where the relay runs, once per service: the keys' purge.
            self.supervisor.start("expired-keys-purge", self.expired_keys.run)
        for broker in self.brokers:
            broker.start()

    def checks(self) -> Mapping[str, health.HealthCheck]:
        timeout = self.settings.db.timeout_seconds
        return {
            "database": self.db.ping,
            "kafka": partial(self.kafka.check, timeout=timeout),
            **{broker.name: partial(broker.check, timeout=timeout) for broker in self.brokers},
        }

    async def close(self) -> None:
        # Consumers finish their batch and stop first; then offsets are committed, connections
        # closed and producers flushed.
        shutdown = self.settings.http.shutdown_seconds
        await self.supervisor.stop(timeout=shutdown)
        for broker in self.brokers:
            await broker.close()
        await self.kafka.close(timeout=shutdown)
        await self.db.dispose()
        self.commits.close()
        await asyncio.to_thread(tracing.shutdown)  # the last spans' export, off the loop


def service_app(
    title: str, service: str, runtime: Runtime, lean: Sequence[LeanRoute[Any]], refresh_keys: Worker
) -> FastAPI:
    """A service's app: its runtime started and closed by the lifespan, with `refresh_keys` (the
    authenticator's signing keys) supervised beside the runtime's own tasks; health and metrics.
    Once started, the garbage collector is settled (`gc_tuning`)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        runtime.supervisor.start("signing-keys", refresh_keys)
        heap.settle()
        log.info("%s service started", service)
        try:
            yield
        finally:
            await runtime.close()
            log.info("%s service stopped", service)

    app = app_factory.new_app(
        title, service=service, http=runtime.settings.http, lifespan=lifespan, lean=lean
    )
    timeout = runtime.settings.db.timeout_seconds
    app.include_router(health.health_router(runtime.checks, timeout=timeout))
    return app
