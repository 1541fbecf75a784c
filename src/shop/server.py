"""uvicorn's HTTP protocol with deadlines on a request's headers and on its body.

uvicorn closes an idle keep-alive connection, but a client that opens a connection and sends
nothing, or trickles a request's headers or body a byte at a time, holds its connection (and a
place under MAX_CONNECTIONS, and whatever its request waits on) for as long as it likes: the
slowloris attack. Here a connection must deliver each request's headers within
REQUEST_HEADER_SECONDS of the connection opening or of the request's first read, and its body
within REQUEST_BODY_SECONDS of the headers; otherwise it is answered 408 and closed.

One timer per connection at most, armed only while a request is incomplete after a read: a
request whose headers and body come in one read (nearly all of them) costs no timer at all.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shop import jsonutil
from shop.settings import load_settings

_IDLE, _HEADERS, _BODY = 0, 1, 2  # what the connection is reading


def _response(content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: " + content_type + b"\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


_HEADERS_LATE = _response(
    b"text/plain; charset=utf-8", b"The request headers did not arrive in time."
)


def _body_late(seconds: float) -> bytes:
    detail = f"The request body did not arrive within {seconds:g} s."
    problem = {"type": "about:blank", "title": "Request timeout", "status": 408, "detail": detail}
    return _response(b"application/problem+json", jsonutil.dumps(problem))


class RequestDeadline(HttpToolsProtocol):
    """HttpToolsProtocol, closing connections whose request headers or body are late (408)."""

    header_seconds: float | None = None  # REQUEST_HEADER_SECONDS, read once per process
    body_seconds: float = 10.0  # REQUEST_BODY_SECONDS
    body_late: bytes = b""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if RequestDeadline.header_seconds is None:
            settings = load_settings()
            RequestDeadline.body_seconds = settings.request_body_seconds
            RequestDeadline.body_late = _body_late(settings.request_body_seconds)
            RequestDeadline.header_seconds = settings.request_header_seconds
        self._reading = _IDLE
        self._due: asyncio.TimerHandle | None = None
        self._due_for = _IDLE  # the part the timer waits for

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(_HEADERS)  # from the accept: a connection that sends nothing is cut too

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._reading == _IDLE:  # every request read in full: nothing to wait for
            if self._due is not None:
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
        if self._due is not None:
            self._due.cancel()
        assert RequestDeadline.header_seconds is not None
        seconds = RequestDeadline.header_seconds if part == _HEADERS else self.body_seconds
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
        if self._due_for == _HEADERS:
            self.transport.write(_HEADERS_LATE)
        else:
            cycle = self.cycle
            if cycle is not None and cycle.response_started and not cycle.response_complete:
                return  # the application answers already, reading no more: let it finish
            if cycle is not None and not cycle.response_started:
                # The application waits for the body: it is told the client left, and
                # whatever it sends now is dropped.
                cycle.disconnected = True
                cycle.message_event.set()
                self.transport.write(self.body_late)
            # (answered already, the body still trickling in: the connection just closes)
        self.transport.close()
