"""What both HTTP services share: JSON and problem responses, errors, limits, health, metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shop import jsonutil
from shop.errors import DomainError
from shop.runtime import gc_tuning as heap
from shop.web import docs_pages as docs
from shop.web import openapi
from shop.web.fastpath.routes import Lean, LeanRoute, LeanRoutes

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[None]]

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["service", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class JSONResponse(StarletteJSONResponse):
    """A JSON response encoded with orjson (decimals as exact numbers).

    A Starlette JSONResponse, so that FastAPI documents a route's response model with it.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return jsonutil.dumps(content)


def next_page_link(request: Request, cursor: str | None) -> dict[str, str]:
    """The `Link: <...>; rel="next"` header of a keyset-paginated list, if there is a next page."""
    if cursor is None:
        return {}
    return {"Link": f'<{request.url.include_query_params(cursor=cursor)}>; rel="next"'}


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """An RFC 9457 problem+json response."""
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    return Response(
        jsonutil.dumps(body),
        status_code=status,
        media_type="application/problem+json",
        headers=dict(headers or {}),
    )


def _field_name(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(err.get("type") == "json_invalid" for err in errors):
        return problem(400, "Malformed JSON", "The request body is not valid JSON.")
    if _body_not_json(request, errors):
        return problem(
            415,
            "Unsupported media type",
            "Send the request body as JSON with Content-Type: application/json.",
        )
    listed = [{"field": _field_name(err["loc"]), "message": err["msg"]} for err in errors]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in listed)
    return problem(422, "Invalid input", detail, type_="/problems/validation", errors=listed)


def _body_not_json(request: Request, errors: Sequence[Any]) -> bool:
    # FastAPI parses a body as JSON only when it is declared so; otherwise the model sees bytes.
    content_type = request.headers.get("content-type", "")
    declared_json = content_type.startswith("application/json") or "+json" in content_type
    whole_body_wrong = any(tuple(err["loc"]) == ("body",) for err in errors)
    return bool(content_type) and not declared_json and whole_body_wrong


async def _on_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return problem(
        exc.status, exc.title, exc.detail, type_=exc.type_, headers=exc.headers, **exc.extra
    )


_TITLES = {
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    413: "Request body too large",
}


def status_problem(status: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    """The problem+json answer for an HTTP-level error (no domain type), titled by its status."""
    return problem(status, _TITLES.get(status, "Error"), detail, headers=headers)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return status_problem(exc.status_code, str(exc.detail), exc.headers)


async def _on_database_down(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem(
        503,
        "Service unavailable",
        "The database did not answer; retry shortly.",
        type_="/problems/unavailable",
        headers={"Retry-After": "2"},
    )


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "Internal error", "The server failed to answer; it has been logged.")


class BodyLimit:
    """Refuses request bodies over `max_bytes` with 413, before anything parses them.

    A body announced by its Content-Length is refused on that header alone (the HTTP parser
    delivers no more than it announces); a chunked one is counted as it is read. (A body that
    does not arrive in time is the server's to cut off: `fastpath.protocol.RequestDeadline`.)
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_bytes:
                    await self._too_large(scope, receive, send)
                    return
                await self.app(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited_receive, send)

    def _detail(self) -> str:
        return f"The request body is larger than {self.max_bytes} bytes."

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = status_problem(413, self._detail())
        await response(scope, receive, send)


class Metrics:
    """Counts and times every request by its route template (not its raw path)."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - start
            observe_request(self.service, scope["method"], template, status, elapsed)


def observe_request(service: str, method: str, template: str, status: int, seconds: float) -> None:
    """Count and time one answered request."""
    HTTP_REQUESTS.labels(service, method, template, str(status)).inc()
    HTTP_LATENCY.labels(service, template).observe(seconds)


class Health(BaseModel):
    """The process answers."""

    status: Literal["ok"]


class Ready(Health):
    """Every dependency answers: `checks` names each one."""

    checks: dict[str, str]


def health_router(checks: Callable[[], Mapping[str, HealthCheck]], *, timeout: float) -> APIRouter:
    """`/healthz` (the process answers), `/readyz` (its dependencies answer), `/metrics`."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=Health, response_class=JSONResponse)
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=Ready,
        response_class=JSONResponse,
        responses={503: openapi.refusal(503, "A dependency does not answer: see `checks`.")},
    )
    async def readyz() -> Response:
        """The database and brokers this service needs answer."""
        named = checks()
        outcomes = await asyncio.gather(*(_run_check(check, timeout) for check in named.values()))
        results = dict(zip(named, outcomes, strict=True))
        if all(result == "ok" for result in results.values()):
            return JSONResponse({"status": "ok", "checks": results})
        failing = ", ".join(name for name, result in results.items() if result != "ok")
        return problem(
            503,
            "Not ready",
            f"Unreachable: {failing}",
            checks=results,
            headers={"Retry-After": "1"},
        )

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus metrics (of every worker process, when there are several)."""
        return Response(_metrics_text(), media_type=CONTENT_TYPE_LATEST)

    return router


def _metrics_text() -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


async def _run_check(check: HealthCheck, timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            await check()
    except Exception as exc:  # a readiness probe reports any failure instead of raising it
        return f"failed: {type(exc).__name__}: {exc}"[:300]
    return "ok"


def new_app(
    title: str,
    *,
    service: str,
    max_body_bytes: int,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    lean: Sequence[LeanRoute[Any]] = (),
) -> FastAPI:
    """A FastAPI app with the shared handlers and middleware, as every service (and the
    benchmark's HTTP floor) builds it.

    FastAPI's own OpenTelemetry hooks are off: the services export Prometheus metrics, and the
    hooks looked up the environment on every request (2 % of a request's CPU in a profile).
    Once the app has started, the garbage collector is settled (`gc_tuning`). The `lean`
    routes answer their plain requests without FastAPI's per-request work (`fastpath.routes`).
    """

    @asynccontextmanager
    async def settled(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(app) if lifespan is not None else nullcontext():
            heap.settle()
            yield

    app = FastAPI(
        title=title,
        version="0.1.0",
        lifespan=settled,
        default_response_class=JSONResponse,
        docs_url=None,  # shop.web.docs_pages serves them with local assets
        redoc_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    install(app, service=service, max_body_bytes=max_body_bytes, lean=lean)
    docs.install(app)
    return app


def install(
    app: FastAPI,
    *,
    service: str,
    max_body_bytes: int,
    lean: Sequence[LeanRoute[Any]] = (),
) -> None:
    """Add the shared error handlers and middleware to a service's app.

    The lean routes sit inside the body limit and the metrics, in front of the router.
    """
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(DomainError, _on_domain_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    for down in (OperationalError, InterfaceError, PoolTimeout, TimeoutError):
        app.add_exception_handler(down, _on_database_down)
    app.add_exception_handler(Exception, _on_unexpected)
    if lean:
        routes = {(route.method, route.path): route for route in lean}
        app.state.lean = Lean(app, routes, max_body_bytes, partial(observe_request, service))
        app.add_middleware(LeanRoutes, lean=app.state.lean)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(Metrics, service=service)
