"""The ASGI middleware both services run: the request body limit and the request metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass

from fastapi import HTTPException
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shop.web.problems import status_problem

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["service", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


@dataclass
class _HttpMiddleware:
    """ASGI middleware whose `http` handles HTTP requests; other scopes (lifespan) pass on."""

    app: ASGIApp

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # The chosen coroutine itself, not one awaiting it: no extra frame on every request.
        if scope["type"] == "http":
            return self.http(scope, receive, send)
        return self.app(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


@dataclass
class BodyLimit(_HttpMiddleware):
    """Refuses request bodies over `max_bytes` with 413, before anything parses them.

    A body announced by its Content-Length is refused on that header alone (the HTTP parser
    delivers no more than it announces); a chunked one is counted as it is read. (A body that
    does not arrive in time is the server's to cut off: `fastpath.protocol.RequestDeadline`.)
    """

    max_bytes: int

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_bytes:
                    await status_problem(413, self._detail())(scope, receive, send)
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


@dataclass
class Metrics(_HttpMiddleware):
    """Counts and times every request by its route template (not its raw path)."""

    service: str

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            template = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - start
            observe_request(self.service, scope["method"], template, status, elapsed)


def observe_request(service: str, method: str, template: str, status: int, seconds: float) -> None:
    """Count and time one answered request."""
    HTTP_REQUESTS.labels(service, method, template, str(status)).inc()
    HTTP_LATENCY.labels(service, template).observe(seconds)
