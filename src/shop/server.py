"""uvicorn's HTTP protocol with a deadline on request headers.

uvicorn closes an idle keep-alive connection, but a client that opens a connection and sends
nothing, or trickles a request's headers a byte at a time, holds its connection (and a place
under MAX_CONNECTIONS) for as long as it likes: the slowloris attack. Here a connection must
deliver each request's headers within REQUEST_HEADER_SECONDS of the connection opening or of the
request's first byte; otherwise it is answered 408 and closed. (The body has its own deadline,
`shop.http.BodyLimit`.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shop.settings import load_settings

_MESSAGE = b"The request headers did not arrive in time."
_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_MESSAGE)).encode() + b"\r\nconnection: close\r\n\r\n" + _MESSAGE
)


class HeaderDeadline(HttpToolsProtocol):
    """HttpToolsProtocol, closing connections whose request headers are late (408)."""

    seconds: float | None = None  # REQUEST_HEADER_SECONDS, read once per process

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if HeaderDeadline.seconds is None:
            HeaderDeadline.seconds = load_settings().request_header_seconds
        self._headers_due: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._headers_due is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        assert HeaderDeadline.seconds is not None
        self._headers_due = self.loop.call_later(HeaderDeadline.seconds, self._late)

    def _disarm(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None

    def _late(self) -> None:
        self._headers_due = None
        if self.transport.is_closing():
            return
        self.transport.write(_TIMEOUT)
        self.transport.close()
