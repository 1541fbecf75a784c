"""The product service's composition root: its app (port 8080), wired from the settings."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from shop import tracing
from shop.access import verifier as auth
from shop.access.client_address import Clients
from shop.access.rate_limit import SearchLimits
from shop.products import api as product_api
from shop.products.repository import SqlProductStore
from shop.products.service import ProductService
from shop.products.tables import product_idempotency, product_outbox
from shop.runtime import logs
from shop.runtime.composition import Runtime, service_app
from shop.runtime.consumer_process import die_with_parent
from shop.settings import Settings, load_settings
from shop.storage import write_counter as generation
from shop.web import openapi


def products_app(settings: Settings | None = None) -> FastAPI:
    """The product service (port 8080)."""
    die_with_parent()
    settings = settings or load_settings()
    logs.configure(settings.log_level)
    tracing.configure(settings.tracing, "product-service")
    runtime = Runtime(
        settings,
        outbox=product_outbox,
        keys=product_idempotency,
        events_topic=settings.kafka.product_events_topic,
    )
    store = SqlProductStore(
        runtime.db,
        query_seconds=settings.products.query_seconds,
        searches=settings.products.search_concurrency,
    )
    service = ProductService(
        store,
        on_event=runtime.relay.notify,
        settings=settings.products,
        writes=generation.for_workers("product-pages"),
    )
    authenticator = auth.from_settings(settings)
    app = service_app(
        "Product service",
        "products",
        runtime,
        product_api.lean_routes(service),
        authenticator.refresh_keys,
    )
    clients = Clients(settings.http.forwarded_allow_ips)
    buckets = generation.worker_file("search-limits.buckets")  # shared by the workers
    searches = SearchLimits(settings.products, slots=settings.http.rate_limit_slots, path=buckets)
    app.include_router(product_api.router(service, authenticator, searches, clients))
    openapi.amend(app, partial(product_api.document_limits, products=settings.products))
    return app
