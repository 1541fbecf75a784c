"""The product service's composition root: its app (port 8080), wired from the settings."""

from __future__ import annotations

from fastapi import FastAPI

from shop.access import verifier as auth
from shop.products import api as product_api
from shop.products.repository import SqlProductStore
from shop.products.service import ProductService
from shop.products.tables import product_idempotency, product_outbox
from shop.runtime import logs
from shop.runtime.composition import Runtime, service_app
from shop.runtime.consumer_process import die_with_parent
from shop.settings import Settings, load_settings
from shop.storage import write_counter as generation


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
        SqlProductStore(runtime.db),
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
        workers={"signing-keys": authenticator.refresh_keys},
    )
    app.include_router(product_api.router(service, authenticator))
    return app
