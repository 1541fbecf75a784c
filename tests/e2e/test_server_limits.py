"""The HTTP server's limits: headers or a body that trickle in (or never come) are cut off with
408."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

import pytest

from shop.settings import Settings
from tests.conftest import OPERATOR
from tests.support import ServiceProcess

pytestmark = pytest.mark.e2e


def _head(path: str, extra: str = "Content-Length: 100\r\n") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\n"
        f"Authorization: {OPERATOR['Authorization']}\r\n{extra}\r\n"
    ).encode()


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
    """One response's status and JSON body."""
    status_line = await reader.readline()
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), json.loads(body)


async def _trickle(
    service: ServiceProcess, path: str, settings: Settings, *, after: bytes = b""
) -> tuple[int, dict[str, object], float]:
    """Send the request `after` (whole, its answer read), then a request's headers and part of
    its body on the same connection, then nothing; the second answer's status and body, and the
    seconds it took."""
    url = urlsplit(service.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        async with asyncio.timeout(settings.http.request_body_seconds + 10):
            if after:
                writer.write(after)
                await _response(reader)
            started = time.monotonic()
            writer.write(_head(path) + b'{"user_id": 1,')
            await writer.drain()
            status, body = await _response(reader)
        return status, body, time.monotonic() - started
    finally:
        writer.close()


@pytest.mark.parametrize("path", ["/orders/sync", "/orders/async/kafka"])
async def test_a_body_that_does_not_arrive_in_time_is_answered_408(
    order_service: ServiceProcess, settings: Settings, path: str
) -> None:
    status, body, seconds = await _trickle(order_service, path, settings)
    assert status == 408
    assert body["status"] == 408
    assert (
        settings.http.request_body_seconds - 0.5
        <= seconds
        <= settings.http.request_body_seconds + 5
    )


async def test_a_trickled_product_body_is_answered_408(
    product_service: ServiceProcess, settings: Settings
) -> None:
    status, body, _ = await _trickle(product_service, "/products", settings)
    assert status == 408
    assert body["title"] == "Request timeout"


@pytest.mark.parametrize("trickle", [b"", b"POST /orders/sync HTTP/1.1\r\nHost: sh"])
async def test_headers_that_do_not_arrive_in_time_close_the_connection_with_408(
    order_service: ServiceProcess, settings: Settings, trickle: bytes
) -> None:
    """Nothing at all, or a byte of headers every half second (each resets no timer)."""
    url = urlsplit(order_service.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    started = time.monotonic()
    try:
        answer = b""
        async with asyncio.timeout(settings.http.request_header_seconds + 10):
            for byte in trickle:
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    async with asyncio.timeout(0.5):
                        answer += await reader.read(1000)
                except TimeoutError:
                    continue
                if answer:
                    break
            answer += await reader.read()  # until the server closes
        seconds = time.monotonic() - started
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert (
        settings.http.request_header_seconds - 0.5
        <= seconds
        <= settings.http.request_header_seconds + 3
    )


async def test_a_body_trickled_on_a_kept_alive_connection_is_answered_408(
    product_service: ServiceProcess, settings: Settings
) -> None:
    """The connection's first request came whole, so no deadline ran for it; the second's
    body is cut off all the same."""
    first = b"GET /products?limit=1 HTTP/1.1\r\nHost: shop\r\n\r\n"
    status, body, seconds = await _trickle(product_service, "/products", settings, after=first)
    assert status == 408
    assert body["title"] == "Request timeout"
    assert (
        settings.http.request_body_seconds - 0.5
        <= seconds
        <= settings.http.request_body_seconds + 5
    )


async def test_a_request_in_pieces_that_arrive_in_time_is_answered(
    product_service: ServiceProcess, settings: Settings
) -> None:
    """Headers in two reads, then the body in two: pauses inside the deadlines cut nothing."""
    url = urlsplit(product_service.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    payload = json.dumps({"name": "pieces", "price": 3, "stock": 1}).encode()
    head = _head("/products", f"Content-Length: {len(payload)}\r\n")
    pause = settings.http.request_body_seconds / 4
    try:
        async with asyncio.timeout(settings.http.request_body_seconds + 10):
            for piece in (head[:20], head[20:] + payload[:5], payload[5:]):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(pause)
            status, body = await _response(reader)
    finally:
        writer.close()
    assert status == 201, body
    assert body["name"] == "pieces"


async def test_a_chunked_body_over_the_limit_is_answered_413(
    product_service: ServiceProcess, settings: Settings
) -> None:
    """No Content-Length to refuse it by: the body is counted as it is read."""
    url = urlsplit(product_service.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    chunk = b"x" * 16_384
    chunks = settings.http.max_body_bytes // len(chunk) + 2
    try:
        async with asyncio.timeout(30):
            writer.write(_head("/products", "Transfer-Encoding: chunked\r\n"))
            for _ in range(chunks):
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            status, body = await _response(reader)
    finally:
        writer.close()
    assert status == 413
    assert "larger" in str(body["detail"])
