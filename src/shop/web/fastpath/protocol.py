"""uvicorn's HTTP protocol with deadlines on a request's headers and on its body, serving the
plain case of the lean routes itself.

uvicorn closes an idle keep-alive connection, but a client that opens a connection and sends
nothing, or trickles a request's headers or body a byte at a time, holds its connection (and a
place under MAX_CONNECTIONS, and whatever its request waits on) for as long as it likes: the
slowloris attack. Here a connection must deliver each request's headers within
REQUEST_HEADER_SECONDS of the connection opening or of the request's first read, and its body
within REQUEST_BODY_SECONDS of the headers; otherwise it is answered 408 and closed.

One timer per connection at most, armed only while a request is incomplete after a read: a
request whose headers and body come in one read (nearly all of them) costs no timer at all.

The lean routes (`fastpath.routes`) are answered here, before any ASGI app: their reply is written
to the socket in one piece, as the ASGI path would have written it. That path (a scope's
receive and send messages through eight middleware layers, and uvicorn's header checks) cost
about a quarter of an order worker's CPU. A request that is not plain for its route (the route's
parse says so, or it has no Content-Length, or a body over the limit) goes to the app as any
other, its body unread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

from opentelemetry.trace import StatusCode
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from shop import tracing
from shop.settings import Http
from shop.web.fastpath.routes import Lean, LeanRoute, Reply, single_headers, state_of
from shop.web.problems import status_problem

log = logging.getLogger(__name__)

_IDLE, _HEADERS, _BODY = 0, 1, 2  # what the connection is reading


def _answer_408(content_type: str, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: " + content_type.encode() + b"\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


def _body_late(seconds: float) -> bytes:
    """The answer to a late body: 408 problem+json, as the app would give it."""
    late = status_problem(408, f"The request body did not arrive within {seconds:g} s.")
    assert late.media_type is not None
    return _answer_408(late.media_type, bytes(late.body))


_HEADERS_LATE = _answer_408(
    "text/plain; charset=utf-8", b"The request headers did not arrive in time."
)
_DEFAULT = Http()


class RequestDeadline(HttpToolsProtocol):
    """HttpToolsProtocol, closing connections whose request headers or body are late (408)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lean = state_of(self.app, "lean", Lean)
        self._http = state_of(self.app, "http", Http) or _DEFAULT  # its request deadlines
        self._reading = _IDLE
        self._due: asyncio.TimerHandle | None = None
        self._due_for = _IDLE  # the part the timer waits for

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(_HEADERS)  # from the accept: a connection that sends nothing is cut too

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._reading == _IDLE:  # every request read in full: nothing to wait for
            if self._due is not None:  # (a call only when there is a timer: this is per read)
                self._disarm()
        elif self._due is None or self._due_for != self._reading:
            self._arm(self._reading)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading = _HEADERS

    def on_headers_complete(self) -> None:
        self._reading = _BODY
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading = _IDLE
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, part: int) -> None:
        self._disarm()
        http = self._http
        seconds = http.request_header_seconds if part == _HEADERS else http.request_body_seconds
        self._due = self.loop.call_later(seconds, self._late)
        self._due_for = part

    def _disarm(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None

    def _late(self) -> None:
        self._due = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._due_for == _HEADERS:
            self.transport.write(_HEADERS_LATE)
        elif cycle is not None and not cycle.response_started:
            # The application waits for the body: it is told the client left, and whatever it
            # sends now is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(_body_late(self._http.request_body_seconds))
        elif cycle is not None and not cycle.response_complete:
            return  # the application answers already, reading no more: let it finish
        # (a body still trickling in after its answer, or no request: the connection just closes)
        self.transport.close()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        route = self._plain_route(cycle, app)
        if route is None:
            super()._start_asgi_task(cycle, app)
            return
        assert self._lean is not None
        task = self.loop.create_task(_answer(cycle, app, route, self._lean))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _plain_route(self, cycle: RequestResponseCycle, app: Any) -> LeanRoute[Any] | None:
        """The lean route of a request this protocol may answer itself; None: the app's."""
        lean = self._lean
        if lean is None or app is not self.app:  # (the concurrency cap's 503 is another app)
            return None
        scope = cast(Scope, cycle.scope)
        route = lean.routes.get((scope["method"], scope["path"]))
        if route is None or cycle.waiting_for_100_continue:
            return None
        headers = single_headers(scope, (b"content-length", b"transfer-encoding"))
        if headers is None or b"transfer-encoding" in headers:
            return None
        length = headers.get(b"content-length")
        if route.reads_body:
            if length is None or not length.isdigit() or int(length) > lean.max_body_bytes:
                return None
        elif length not in (None, b"0"):
            return None
        return route


async def _answer(cycle: RequestResponseCycle, app: Any, route: LeanRoute[Any], lean: Lean) -> None:
    """Answer a lean route's request on `cycle`, or hand it to `app` when it is not plain."""
    start = time.perf_counter()
    try:
        while cycle.more_body and not cycle.disconnected:  # the body, as `receive` waits for it
            cycle.flow.resume_reading()
            await cycle.message_event.wait()
            cycle.message_event.clear()
        if cycle.disconnected:
            return
        scope = cast(Scope, cycle.scope)
        parsed = route.parse(scope, bytes(cycle.body))
        if parsed is None:
            cycle.message_event.set()  # the app's first `receive` gets the body at once
            await cycle.run_asgi(app)
            return
        scope["route"] = route
        if not tracing.pick():  # (off: never)
            await _respond(cycle, route, lean, scope, parsed, start)
            return
        with tracing.server_span(scope["method"], route.path, scope["headers"]) as span:
            status = await _respond(cycle, route, lean, scope, parsed, start)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
    except BaseException as exc:  # as uvicorn's run_asgi does for an app's exception
        log.error("Exception answering a lean route", exc_info=exc)
        if not cycle.response_started:
            await cycle.send_500_response()
        else:
            cycle.transport.close()
    finally:
        cycle.on_response = _nothing  # as uvicorn's run_asgi leaves it (a no-op)


async def _respond(
    cycle: RequestResponseCycle,
    route: LeanRoute[Any],
    lean: Lean,
    scope: Scope,
    parsed: Any,
    start: float,
) -> int:
    """Answer a parsed request: the route's reply, or its exception as the app answers it."""
    try:
        reply = await route.answer(scope, parsed)
    except Exception as exc:
        status = await lean.fail(exc, scope, cast(Receive, cycle.receive), cast(Send, cycle.send))
        lean.observe(scope["method"], route.path, status, time.perf_counter() - start)
        return status
    _write(cycle, reply)
    lean.observe(scope["method"], route.path, reply.status, time.perf_counter() - start)
    return reply.status


def _write(cycle: RequestResponseCycle, reply: Reply) -> None:
    """The response in one write, with the bytes uvicorn's `send` would have written."""
    if cycle.disconnected:
        return
    content = [STATUS_LINE[reply.status]]
    for name, value in (*cycle.default_headers, *reply.head()):
        content += (name, b": ", value, b"\r\n")
    if not cycle.keep_alive:
        content.append(b"connection: close\r\n")
    content += (b"\r\n", reply.body)
    cycle.response_started = cycle.response_complete = True
    cycle.transport.write(b"".join(content))
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()


def _nothing() -> None:
    """One no-op for every answered request, not a new lambda each time."""
