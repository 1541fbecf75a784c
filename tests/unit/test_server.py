"""The HTTP protocol's request deadlines, driven with a fake transport on a real event loop.

What matters beyond the 408s (tests/e2e/test_server_limits.py has those against the running
services): a request that arrives in one read arms no timer, so the deadlines cost the common
case nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.server import ServerState

from shop.settings import Http
from shop.web.fastpath.protocol import RequestDeadline

SECONDS = 0.2


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class SpyLoop:
    """The running loop, noting the deadline timers the protocol arms."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.deadlines: list[asyncio.TimerHandle] = []

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any:
        handle = self._loop.call_later(delay, callback, *args)
        if getattr(callback, "__name__", "") == "_late":
            self.deadlines.append(handle)
        return handle

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


class Echo:
    """An ASGI app that reads the whole body, then answers 200 with its length."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        # short deadlines, found by the protocol as it finds an app factory's
        self.state = SimpleNamespace(
            http=Http(request_header_seconds=SECONDS, request_body_seconds=SECONDS)
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        size = 0
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "http.disconnect":
                break
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = str(size).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _connect(app: Echo) -> tuple[RequestDeadline, FakeTransport, SpyLoop]:
    config = Config(app=app, http=RequestDeadline, log_config=None)
    loop = SpyLoop(asyncio.get_running_loop())
    protocol = RequestDeadline(config, ServerState(), {}, _loop=loop)
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport, loop


def _post(body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return b"POST /x HTTP/1.1\r\nHost: shop\r\nContent-Length: %d\r\n\r\n%s" % (size, body)


async def _answered(transport: FakeTransport, count: int) -> None:
    async with asyncio.timeout(2):
        while transport.written.count(b"HTTP/1.1 ") < count:
            await asyncio.sleep(0.001)


async def test_requests_that_arrive_in_one_read_arm_no_deadline() -> None:
    app = Echo()
    protocol, transport, loop = _connect(app)
    assert len(loop.deadlines) == 1  # the accept's: a connection that sends nothing is cut too
    for sent in range(1, 4):
        protocol.data_received(_post(b'{"a": 1}'))
        await _answered(transport, sent)
    assert len(loop.deadlines) == 1
    assert loop.deadlines[0].cancelled()
    await asyncio.sleep(SECONDS * 2)
    assert transport.written.count(b"HTTP/1.1 200 ") == 3
    assert not transport.closed


async def test_headers_that_stop_half_way_are_cut_with_408() -> None:
    app = Echo()
    protocol, transport, _ = _connect(app)
    protocol.data_received(_post(b"{}"))
    await _answered(transport, 1)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHo")  # the next request, kept alive
    await asyncio.sleep(SECONDS * 2)
    assert transport.written.count(b"HTTP/1.1 408 Request Timeout") == 1
    assert transport.written.endswith(b"The request headers did not arrive in time.")
    assert transport.closed
    assert len(app.received) == 1  # the second request never reached the app


async def test_a_late_body_is_answered_408_problem_json_and_the_app_sees_a_disconnect() -> None:
    app = Echo()
    protocol, transport, _ = _connect(app)
    protocol.data_received(_post(b'{"a":', length=10))
    await asyncio.sleep(SECONDS * 2)
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"content-type: application/problem+json" in head
    problem = orjson.loads(body)
    assert problem["status"] == 408
    assert problem["title"] == "Request timeout"
    assert transport.closed
    assert [m["type"] for m in app.received] == ["http.request", "http.disconnect"]
    assert b"HTTP/1.1 200" not in transport.written  # the app's own answer was dropped


async def test_pieces_that_complete_in_time_are_answered_and_nothing_fires_later() -> None:
    app = Echo()
    protocol, transport, loop = _connect(app)
    request = _post(b'{"abc": 1}')
    for piece in (request[:10], request[10:-4], request[-4:]):
        protocol.data_received(piece)
        await asyncio.sleep(SECONDS / 4)
    await _answered(transport, 1)
    await asyncio.sleep(SECONDS * 2)
    assert transport.written.startswith(b"HTTP/1.1 200 ")
    assert transport.written.endswith(b"10")
    assert b"408" not in transport.written
    assert not transport.closed
    assert all(handle.cancelled() for handle in loop.deadlines)
