"""The FastAPI app as every service (and the benchmark's HTTP floor) builds it: the shared
problem handlers, middleware, fast-path routes and local API docs."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

from fastapi import FastAPI

from shop import tracing
from shop.settings import Http
from shop.web import docs_pages as docs
from shop.web import openapi
from shop.web.fastpath.routes import Lean, LeanRoute
from shop.web.middleware import BodyLimit, Metrics, observe_request
from shop.web.problems import JSONResponse, install_handlers

_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    """Probes and scrapes, and the requests `tracing.pick` did not choose."""
    return scope.get("path") in _UNTRACED or not tracing.pick()


def new_app(
    title: str,
    *,
    service: str,
    http: Http,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    lean: Sequence[LeanRoute[Any]] = (),
) -> FastAPI:
    """A FastAPI app with the shared handlers and middleware, as every service (and the
    benchmark's HTTP floor) builds it.

    FastAPI's own OpenTelemetry hooks trace its requests when tracing is on (`shop.tracing`),
    the share of them `tracing.pick` chooses, probes and scrapes left out; off, they are not
    installed at all (they looked up the
    environment on every request: 2 % of a request's CPU in a profile). Its metrics and logs
    stay off: the services export Prometheus metrics and JSON logs.
    The `lean` routes answer their plain requests without FastAPI's per-request work
    (`fastpath.routes`); the server's protocol serves them from `app.state.lean`, and finds the
    request deadlines in `app.state.http`.
    """

    app = FastAPI(
        title=title,
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JSONResponse,
        docs_url=None,  # shop.web.docs_pages serves them with local assets
        redoc_url=None,
        telemetry={
            "tracing": tracing.enabled(),
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "exclude": _untraced,
        },
    )
    install_handlers(app)
    if lean:
        routes = {(route.method, route.path): route for route in lean}
        app.state.lean = Lean(app, routes, http.max_body_bytes, partial(observe_request, service))
    app.add_middleware(BodyLimit, max_bytes=http.max_body_bytes)
    app.add_middleware(Metrics, service=service)
    app.state.http = http
    docs.install(app)
    openapi.amend(app, openapi.exact_integer_bounds)
    return app
