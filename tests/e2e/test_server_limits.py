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


async def _trickle(
    service: ServiceProcess, path: str, settings: Settings
) -> tuple[int, dict[str, object], float]:
    """Send the headers and part of a body, then nothing; the status, body and seconds taken."""
    url = urlsplit(service.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    started = time.monotonic()
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\n"
            f"Authorization: {OPERATOR['Authorization']}\r\nContent-Length: 100\r\n\r\n"
        )
        writer.write(head.encode() + b'{"user_id": 1,')
        await writer.drain()
        async with asyncio.timeout(settings.request_body_seconds + 10):
            status_line = await reader.readline()
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), json.loads(body), time.monotonic() - started
    finally:
        writer.close()


@pytest.mark.parametrize("path", ["/orders/sync", "/orders/async/kafka"])
async def test_a_body_that_does_not_arrive_in_time_is_answered_408(
    order_service: ServiceProcess, settings: Settings, path: str
) -> None:
    status, body, seconds = await _trickle(order_service, path, settings)
    assert status == 408
    assert body["status"] == 408
    assert settings.request_body_seconds - 0.5 <= seconds <= settings.request_body_seconds + 5


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
        async with asyncio.timeout(settings.request_header_seconds + 10):
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
    assert settings.request_header_seconds - 0.5 <= seconds <= settings.request_header_seconds + 3
