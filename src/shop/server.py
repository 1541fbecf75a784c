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
import functools
from typing import Any, NamedTuple

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shop.http import status_problem
from shop.settings import load_settings

_IDLE, _HEADERS, _BODY = 0, 1, 2  # what the connection is reading


def _answer_408(content_type: str, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: " + content_type.encode() + b"\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


_HEADERS_LATE = _answer_408(
    "text/plain; charset=utf-8", b"The request headers did not arrive in time."
)


class Deadlines(NamedTuple):
    header_seconds: float
    body_seconds: float
    body_late: bytes  # the answer to a late body: 408 problem+json, as the app would give it


def make_deadlines(header_seconds: float, body_seconds: float) -> Deadlines:
    late = status_problem(408, f"The request body did not arrive within {body_seconds:g} s.")
    assert late.media_type is not None
    return Deadlines(header_seconds, body_seconds, _answer_408(late.media_type, bytes(late.body)))


@functools.cache
def deadlines() -> Deadlines:
    """REQUEST_HEADER_SECONDS and REQUEST_BODY_SECONDS, read once per process."""
    settings = load_settings()
    return make_deadlines(settings.request_header_seconds, settings.request_body_seconds)


class RequestDeadline(HttpToolsProtocol):
    """HttpToolsProtocol, closing connections whose request headers or body are late (408)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadlines = deadlines()
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
        d = self._deadlines
        seconds = d.header_seconds if part == _HEADERS else d.body_seconds
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
            self.transport.write(self._deadlines.body_late)
        elif cycle is not None and not cycle.response_complete:
            return  # the application answers already, reading no more: let it finish
        # (a body still trickling in after its answer, or no request: the connection just closes)
        self.transport.close()
