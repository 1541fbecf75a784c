"""The HTTP protocol answers the lean routes itself, with the bytes the app would have written.

Each request goes to two connections of the same app: one whose protocol serves the lean
routes (`fastpath.protocol`), one whose protocol hands everything to the ASGI app (the app's own
`LeanRoutes` middleware then serves them). Every answer must be byte for byte the same, and a
request that is not plain (the route's parse refuses it, no Content-Length, a body over the
limit) must reach the app with its body.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response
from uvicorn.config import Config
from uvicorn.server import ServerState

from shop.errors import Conflict
from shop.settings import Http
from shop.web import app_factory
from shop.web.fastpath.protocol import RequestDeadline
from shop.web.fastpath.routes import LeanRoute, Reply
from tests.unit.test_server import FakeTransport

LIMIT = 64


def _parse(_scope: Any, body: bytes) -> bytes | None:
    return body if body.startswith(b"{") else None


async def _answer(_scope: Any, body: bytes) -> Reply:
    if body == b"{conflict}":
        raise Conflict("taken")
    if body == b"{crash}":
        raise RuntimeError("a bug")
    return Reply(201, b'{"got":' + str(len(body)).encode() + b"}", ((b"location", b"/things/1"),))


def _app() -> FastAPI:
    app = app_factory.new_app(
        "test",
        service="test",
        http=Http.model_construct(
            max_body_bytes=LIMIT, request_header_seconds=30.0, request_body_seconds=30.0
        ),
        lean=[LeanRoute("POST", "/t", _parse, _answer)],
    )

    @app.post("/t")
    async def framework(request: Request) -> Response:
        body = await request.body()
        return Response(b"framework:" + body, status_code=200, media_type="text/plain")

    return app


class Counting:
    """The ASGI app, counting the requests that reach it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await self.app(scope, receive, send)


def _connect(app: FastAPI, *, lean: bool) -> tuple[RequestDeadline, FakeTransport, Counting]:
    config = Config(app=app, http=RequestDeadline, log_config=None, proxy_headers=False)
    config.load()
    counting = config.loaded_app = Counting(config.loaded_app)
    state = ServerState()
    state.default_headers = [(b"date", b"Sun, 06 Dec 2026 10:00:00 GMT"), (b"server", b"uvicorn")]
    protocol = RequestDeadline(config, state, {}, _loop=asyncio.get_running_loop())
    if not lean:
        protocol._lean = None
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport, counting


async def _exchange(
    app: FastAPI, pieces: list[bytes], answers: int, *, lean: bool
) -> tuple[bytes, int]:
    """What the connection wrote (and whether it closed it), and how many requests reached
    the ASGI app."""
    protocol, transport, counting = _connect(app, lean=lean)
    for piece in pieces:
        protocol.data_received(piece)
        await asyncio.sleep(0.005)
    async with asyncio.timeout(3):
        while transport.written.count(b"HTTP/1.1 ") < answers:
            await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)
    closed = transport.closed
    protocol.connection_lost(None)
    return transport.written + (b"<closed>" if closed else b""), counting.calls


def _post(body: bytes, *headers: bytes) -> bytes:
    head = b"POST /t HTTP/1.1\r\nHost: shop\r\n" + b"".join(h + b"\r\n" for h in headers)
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


CASES = {
    "plain": ([_post(b'{"a": 1}')], 1),
    "two kept alive in one read": ([_post(b"{1}") + _post(b'{"bb": 22}')], 2),
    "body in pieces": ([_post(b'{"abc": 1}')[:-4], _post(b'{"abc": 1}')[-4:]], 1),
    "connection close": ([_post(b"{x}", b"Connection: close")], 1),
    "not plain for its route": ([_post(b"[1, 2]")], 1),
    "a domain error": ([_post(b"{conflict}")], 1),
    "an unexpected error": ([_post(b"{crash}")], 1),
    "over the limit": ([_post(b"{" + b"x" * LIMIT + b"}")], 1),
    "chunked": (
        [b"POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{1}\r\n0\r\n\r\n"],
        1,
    ),
    "http 1.0": ([b"POST /t HTTP/1.0\r\nContent-Length: 3\r\n\r\n{1}"], 1),
    "another path": ([b"POST /u HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\n\r\n{1}"], 1),
    "another method": ([b"PUT /t HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\n\r\n{1}"], 1),
}


@pytest.mark.parametrize("case", CASES)
async def test_the_protocol_answers_as_the_app_would(case: str) -> None:
    pieces, answers = CASES[case]
    app = _app()
    async with app.router.lifespan_context(app):
        served, _ = await _exchange(app, pieces, answers, lean=True)
        through_app, calls = await _exchange(app, pieces, answers, lean=False)
    assert served == through_app
    assert served.count(b"HTTP/1.1 ") == answers
    assert calls == answers


async def test_a_plain_request_is_answered_by_the_route_and_others_reach_the_app() -> None:
    app = _app()
    async with app.router.lifespan_context(app):
        plain, plain_calls = await _exchange(app, [_post(b'{"a": 1}')], 1, lean=True)
        other, other_calls = await _exchange(app, [_post(b"[1]")], 1, lean=True)
        failed, failed_calls = await _exchange(app, [_post(b"{conflict}")], 1, lean=True)
    assert plain.startswith(b"HTTP/1.1 201 Created\r\n")
    assert plain.endswith(b'{"got":8}')
    assert plain_calls == 0  # answered by the protocol
    assert other.startswith(b"HTTP/1.1 200 OK\r\n")
    assert other.endswith(b"framework:[1]")
    assert other_calls == 1
    assert failed.startswith(b"HTTP/1.1 409 Conflict\r\n")
    assert b"content-type: application/problem+json" in failed
    assert failed_calls == 0  # the app's handler answered, called by the protocol


async def test_another_method_on_a_lean_route_is_405_naming_what_is_allowed() -> None:
    app = _app()
    async with app.router.lifespan_context(app):
        for method in (b"GET", b"PUT", b"DELETE"):
            request = method + b" /t HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\n\r\n"
            answer, calls = await _exchange(app, [request], 1, lean=True)
            assert answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n"), answer
            assert b"\r\nallow: POST\r\n" in answer, answer
            assert b"content-type: application/problem+json" in answer
            assert calls == 1
