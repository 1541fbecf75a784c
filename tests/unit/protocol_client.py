"""In-process clients of the services' HTTP protocol (`fastpath.protocol.RequestDeadline`): a
connection over a fake socket, and an httpx transport that sends each request over one.

The lean routes are served by the protocol, before any ASGI app is called, so a client of the
ASGI app itself (httpx.ASGITransport) never meets them; these clients meet what a client over
the network meets, lean routes included.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
import httpx
from fastapi import FastAPI
from uvicorn.config import Config
from uvicorn.server import ServerState

from shop.web.fastpath.protocol import RequestDeadline
from tests.unit.test_server import FakeTransport

# Fixed, so that answers compare byte for byte.
DEFAULT_HEADERS = [(b"date", b"Sun, 06 Dec 2026 10:00:00 GMT"), (b"server", b"uvicorn")]


class Counting:
    """The ASGI app, counting the requests that reach it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await self.app(scope, receive, send)


def connect(
    app: FastAPI, transport: FakeTransport, *, lean: bool = True
) -> tuple[RequestDeadline, Counting]:
    """A connection to `app` over `transport`; `lean=False`: its protocol hands every request to
    the app, lean routes or not."""
    config = Config(app=app, http=RequestDeadline, log_config=None, proxy_headers=False)
    config.load()
    counting = config.loaded_app = Counting(config.loaded_app)
    state = ServerState()
    state.default_headers = list(DEFAULT_HEADERS)
    protocol = RequestDeadline(config, state, {}, _loop=asyncio.get_running_loop())
    if not lean:
        protocol._lean = None
    protocol.connection_made(transport)
    return protocol, counting


class ProtocolTransport(httpx.AsyncBaseTransport):
    """Sends each request over a new connection of the protocol to `app` and reads its answer.
    `calls`: how many of them reached the ASGI app (the others the protocol answered)."""

    def __init__(self, app: FastAPI, *, lean: bool = True) -> None:
        self.app = app
        self.lean = lean
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        client = _ClientEnd(head=request.method == "HEAD")
        protocol, counting = connect(self.app, client, lean=self.lean)
        protocol.data_received(_written(request))
        async with asyncio.timeout(10):
            await client.answered.wait()
            await asyncio.gather(*protocol.tasks)  # the app's task ends after its last send
        protocol.connection_lost(None)
        self.calls += counting.calls
        assert client.status, f"the connection closed unanswered: {client.written!r}"
        return httpx.Response(
            client.status, headers=client.headers, content=bytes(client.body), request=request
        )


def _written(request: httpx.Request) -> bytes:
    """The request as a client writes it on the socket: its headers as they are (httpx's Host
    and Content-Length among them), then its body."""
    head = b"%s %s HTTP/1.1\r\n" % (request.method.encode(), request.url.raw_path)
    head += b"".join(name + b": " + value + b"\r\n" for name, value in request.headers.raw)
    return head + b"\r\n" + request.read()


class _ClientEnd(FakeTransport):
    """The socket, read at the client's end: `answered` once a whole response has come (a HEAD
    request's: its head) or the server closed the connection."""

    def __init__(self, *, head: bool) -> None:
        super().__init__()
        self.answered = asyncio.Event()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self._head = head
        self._parser = httptools.HttpResponseParser(self)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        if not self.answered.is_set():
            self._parser.feed_data(bytes(data))

    def close(self) -> None:
        super().close()
        self.answered.set()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._head:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.answered.set()
