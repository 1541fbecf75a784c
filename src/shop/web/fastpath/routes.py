"""Hot routes answered without FastAPI's per-request machinery, under the same contract.

FastAPI's work per request (matching the path against every route, solving dependencies,
reading and validating the body through its models, an exit stack per request) cost more CPU
than the order itself: answering a validated order body with no I/O took 342 us through
FastAPI and 95 us as a bare ASGI callable. A `LeanRoute` answers one method and path, and only
in the plain case: its `parse` returns None for anything it does not recognise as plain (another
content type, a body that does not validate, a repeated or odd header or query parameter), and
that request goes to the FastAPI app with its body. So every refusal keeps its one definition
(the FastAPI route and the shared handlers), and the OpenAPI document is unchanged. An error
raised while answering goes through the app's own exception handlers.

The server's HTTP protocol serves them (`fastpath.protocol`), before any ASGI app is called: a
client of the ASGI app itself (httpx.ASGITransport) meets the FastAPI routes alone.
`tests/unit/test_lean.py` sends the same generated requests over the protocol to an app with and
without the lean routes and requires identical answers.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Reply:
    """A JSON answer: status, body, and headers besides Content-Length and Content-Type."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def head(self) -> tuple[tuple[bytes, bytes], ...]:
        """Every header the reply is sent with, in the order it is sent."""
        return (
            *self.headers,
            (b"content-length", str(len(self.body)).encode()),
            (b"content-type", b"application/json"),
        )


def as_response(reply: Reply) -> Response:
    """The same answer as a Starlette response, for the FastAPI route of a lean one."""
    response = Response(reply.body, status_code=reply.status, media_type="application/json")
    response.raw_headers[:0] = reply.headers
    return response


@dataclass(frozen=True, slots=True)
class LeanRoute(Generic[T]):
    """One method and exact path: `parse` the plain case (None: not plain), then `answer` it."""

    method: str
    path: str
    parse: Callable[[Scope, bytes], T | None]
    answer: Callable[[Scope, T], Awaitable[Reply]]
    reads_body: bool = True


@dataclass(frozen=True, slots=True)
class Lean:
    """An app's lean routes by method and path, and what answering them outside the app needs:
    its exception handlers, its body limit and its request metrics."""

    owner: FastAPI
    routes: Mapping[tuple[str, str], LeanRoute[Any]]
    max_body_bytes: int
    observe: Callable[[str, str, int, float], None]  # method, route template, status, seconds

    async def fail(self, exc: Exception, scope: Scope, receive: Receive, send: Send) -> int:
        """Answer `exc` as the app would: through the handler of its nearest class (as Starlette
        chooses it); the status."""
        handlers = self.owner.exception_handlers
        nearest = next((cls for cls in type(exc).__mro__ if cls in handlers), None)
        if nearest is None:
            raise exc
        response = handlers[nearest](Request(scope, receive), exc)
        if inspect.isawaitable(response):
            response = await response
        await response(scope, receive, send)
        return int(response.status_code)


def state_of(app: object, name: str, kind: type[T]) -> T | None:
    """`app.state.<name>` if it is a `kind`, found through the middleware that wraps the app
    (uvicorn's): an app's lean routes, its HTTP settings (the request deadlines)."""
    for _ in range(3):
        found = getattr(getattr(app, "state", None), name, None)
        if isinstance(found, kind):
            return found
        app = getattr(app, "app", None)
    return None


# The methods a 405's Allow header may list (RFC 9110's, and PATCH): each is tried in turn.
METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
_STATIC_METHODS = {"GET", "HEAD"}  # what a mounted StaticFiles answers (the docs' assets)


def allowed_methods(scope: Scope) -> list[str]:
    """The methods some route of the request's app answers on its path, sorted: its router's
    routes (FastAPI's included routers among them) that take the path with the method, and its
    lean routes on the path. What a 405's `Allow` header lists (RFC 9110 section 10.2.1);
    empty for a path no route takes. Only called for a 404 or 405: each method is tried."""
    app = scope.get("app")
    routes = getattr(getattr(app, "router", None), "routes", ())
    methods: set[str] = set()
    # The app's root path: a mount (the docs' assets) answers with its own in `root_path`.
    root_path = scope.get("app_root_path", scope.get("root_path", ""))
    for method in METHODS:
        # Only the keys routing reads: a route's matching may note things in the scope.
        probe = {
            "type": "http",
            "method": method,
            "path": scope["path"],
            "root_path": root_path,
            "headers": scope.get("headers", []),
            "query_string": scope.get("query_string", b""),
        }
        for route in routes:
            if isinstance(route, Mount):  # any method reaches its app; StaticFiles takes two
                if isinstance(route.app, StaticFiles) and route.matches(probe)[0] != Match.NONE:
                    methods |= _STATIC_METHODS
            elif route.matches(probe)[0] == Match.FULL:
                methods.add(method)
                break
    lean = state_of(app, "lean", Lean)
    if lean is not None:
        methods |= {method for method, path in lean.routes if path == scope["path"]}
    return sorted(methods)


def single_headers(scope: Scope, names: Sequence[bytes]) -> dict[bytes, bytes] | None:
    """The named headers (lower-case names) of a request, or None if one of them repeats."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in names:
            if name in found:
                return None
            found[name] = value
    return found


def is_json(content_type: bytes | None) -> bool:
    """A Content-Type of exactly application/json (parameters such as charset allowed)."""
    if content_type is None:
        return False
    return content_type.split(b";", 1)[0].strip().lower() == b"application/json"
