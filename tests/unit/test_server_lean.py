"""The HTTP protocol answers the lean routes itself, with the bytes FastAPI would have written.

Each request goes to two connections of the same app: one whose protocol serves the lean
routes (`fastpath.protocol`), one whose protocol hands everything to the ASGI app, where the
FastAPI route of the same method and path gives the lean route's answers. Every answer must be
byte for byte the same, and a request that is not plain (the route's parse refuses it, no
Content-Length, a body over the limit) must reach the app with its body.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response

from shop.errors import Conflict
from shop.settings import Http
from shop.web import app_factory
from shop.web.fastpath.routes import LeanRoute, Reply, as_response
from tests.unit.protocol_client import connect
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
        """The lean route's answer, and for what its parse refuses, the framework's own."""
        body = await request.body()
        plain = _parse(None, body)
        if plain is None:
            return Response(b"framework:" + body, status_code=200, media_type="text/plain")
        return as_response(await _answer(None, plain))

    return app


async def _exchange(
    app: FastAPI, pieces: list[bytes], answers: int, *, lean: bool
) -> tuple[bytes, int]:
    """What the connection wrote (and whether it closed it), and how many requests reached
    the ASGI app."""
    transport = FakeTransport()
    protocol, counting = connect(app, transport, lean=lean)
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


# case: (what the client sends, how many answers, how many requests the protocol serving the
# lean routes hands to the app: those that are not plain for the lean route, or for no route)
CASES = {
    "plain": ([_post(b'{"a": 1}')], 1, 0),
    "two kept alive in one read": ([_post(b"{1}") + _post(b'{"bb": 22}')], 2, 0),
    "body in pieces": ([_post(b'{"abc": 1}')[:-4], _post(b'{"abc": 1}')[-4:]], 1, 0),
    "connection close": ([_post(b"{x}", b"Connection: close")], 1, 0),
    "not plain for its route": ([_post(b"[1, 2]")], 1, 1),
    "a domain error": ([_post(b"{conflict}")], 1, 0),
    "an unexpected error": ([_post(b"{crash}")], 1, 0),
    "over the limit": ([_post(b"{" + b"x" * LIMIT + b"}")], 1, 1),
    "chunked": (
        [b"POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{1}\r\n0\r\n\r\n"],
        1,
        1,
    ),
    "http 1.0": ([b"POST /t HTTP/1.0\r\nContent-Length: 3\r\n\r\n{1}"], 1, 0),
    "another path": ([b"POST /u HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\n\r\n{1}"], 1, 1),
    "another method": ([b"PUT /t HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\n\r\n{1}"], 1, 1),
}


@pytest.mark.parametrize("case", CASES)
async def test_the_protocol_answers_as_the_fastapi_route_does(case: str) -> None:
    pieces, answers, handed_over = CASES[case]
    app = _app()
    async with app.router.lifespan_context(app):
        served, served_calls = await _exchange(app, pieces, answers, lean=True)
        through_app, calls = await _exchange(app, pieces, answers, lean=False)
    if case == "an unexpected error":
        # The same answer; but uvicorn closes the connection when an exception escapes the app
        # after its answer (Starlette's error middleware raises it again once the 500 is sent),
        # while the protocol, answering through the same handler, keeps the connection.
        assert through_app == served + b"<closed>"
    else:
        assert served == through_app
    assert served.count(b"HTTP/1.1 ") == answers
    assert served_calls == handed_over
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
