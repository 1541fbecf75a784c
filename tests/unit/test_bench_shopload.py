"""The bench's load generator (bench/shopload, built with Go) and its customers' requests file,
against a small HTTP server in this process: every request counted, latencies of failures
recorded, each line's token sent, answers read to their end however they are framed."""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import jwt
import pytest
from bench import loadgen
from bench.customers import FIRST_USER, Customers, warm_token_caches

from shop.settings import Settings, load_settings


def _have_go() -> bool:
    try:
        loadgen.go_command()
    except RuntimeError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _have_go(), reason="no Go to build shopload with")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the services
    seen: ClassVar[list[tuple[str, dict[str, int]]]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()

    def log_message(self, *_args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, *, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization", "")
        with self.lock:
            self.seen.append((auth, body))
        claims = jwt.decode(auth.removeprefix("Bearer "), options={"verify_signature": False})
        own = claims["sub"] == str(body["user_id"]) and claims["scope"] == ""
        json_type = self.headers.get("Content-Type") == "application/json"
        self._send(201 if own and json_type else 403, b'{"id": "x"}')

    def do_GET(self) -> None:
        if self.path.startswith("/orders"):
            with self.lock:
                self.seen.append((self.headers.get("Authorization", ""), {}))
            self._send(200, b"[]")
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"a" * 5000, b"b" * 70000, b"c"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: 1\r\n\r\n")
        elif self.path == "/close":  # no length: the body ends with the connection
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"z" * 100_000)
            self.close_connection = True
        elif self.path == "/slow":
            time.sleep(0.6)
            self._send(200, b"late")
        elif self.path.startswith("/sleep"):
            time.sleep(0.05)
            self._send(200, b"ok")
        elif self.path == "/status":
            self._send(503, b'{"status": 503}', close=True)
        else:
            self._send(200, b"x" * 40_000)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (the timeout test) breaks the pipe: expected


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    keys = tmp_path_factory.mktemp("auth")
    return load_settings(
        auth_signing_key_file=str(keys / "signing.pem"),
        auth_public_key_file=str(keys / "public.pem"),
    )


def test_the_build_is_cached_under_the_digest_of_the_sources() -> None:
    binary = loadgen.ensure_shopload()
    assert binary.name == "shopload"
    assert binary.parent.name == f"shopload-{loadgen.source_digest()}"
    assert loadgen.ensure_shopload() == binary  # built once
    assert not list(binary.parent.glob(".shopload-*.partial"))
    assert "shopload" in loadgen.shopload_version()


def test_a_requests_file_has_each_customer_in_turn_with_their_own_token(
    settings: Settings, tmp_path: Path
) -> None:
    customers = Customers.make(settings, count=7)
    first = customers.order_requests(tmp_path / "a.tsv", [11, 12, 13], seed="x", rounds=3)
    again = customers.order_requests(tmp_path / "b.tsv", [21, 22, 23], seed="x", rounds=3)
    lines = first.read_text().splitlines()
    assert len(lines) == 21
    products = []
    for i, line in enumerate(lines):
        auth, body = line.split("\t")
        claims = jwt.decode(auth.removeprefix("Bearer "), options={"verify_signature": False})
        order = json.loads(body)
        assert order["user_id"] == FIRST_USER + i % 7 == int(claims["sub"])
        assert claims["scope"] == ""
        assert claims["exp"] - claims["iat"] == 6 * 3600
        products.append(order["product_id"] - 10)
    # The same seed draws the same product indices whatever the ids (both sides of a compare).
    drawn = [
        json.loads(x.split("\t")[1])["product_id"] - 20 for x in again.read_text().splitlines()
    ]
    assert drawn == products
    assert len(set(products)) > 1


def test_orders_carry_their_customers_token_and_every_answer_is_counted(
    settings: Settings, server: str, tmp_path: Path
) -> None:
    customers = Customers.make(settings, count=50)
    requests = customers.order_requests(tmp_path / "orders.tsv", [1], seed=1, rounds=2)
    Handler.seen.clear()
    result = loadgen.run_load(
        f"{server}/orders", connections=4, seconds=1.0, requests=requests, method="POST"
    )
    assert result.statuses.keys() == {"201"}, result
    assert result.requests == result.count(201) == len(Handler.seen) > 50
    assert not result.errors
    # In turn: every customer sent, none more than one request more than another (give or
    # take one for the requests that were due when the time was up).
    sent = collections.Counter(body["user_id"] for _, body in Handler.seen)
    assert sent.keys() == {FIRST_USER + i for i in range(50)}
    assert max(sent.values()) - min(sent.values()) <= 2
    assert result.p50_ms > 0
    assert result.p99_ms >= result.p50_ms


@pytest.mark.parametrize("path", ["/chunked", "/close", "/big"])
def test_answers_are_read_to_their_end_however_framed(server: str, path: str) -> None:
    result = loadgen.run_load(f"{server}{path}", connections=2, seconds=0.5, method="GET")
    assert result.statuses.keys() == {"200"}, result
    assert not result.errors
    assert result.requests > 2


def test_other_statuses_are_counted_as_failed(server: str) -> None:
    result = loadgen.run_load(f"{server}/status", connections=2, seconds=0.5, method="GET")
    assert result.statuses.keys() == {"503"}
    assert result.failed == result.requests > 2


def test_timeouts_are_counted_with_their_latency(server: str) -> None:
    result = loadgen.run_load(
        f"{server}/slow", connections=3, seconds=0.5, method="GET", timeout=0.2
    )
    assert result.statuses == {}
    assert result.errors == {"timeout (200ms)": result.requests}
    assert result.requests >= 3
    assert 200 <= result.p50_ms < 400  # counted when it failed, not dropped


def test_in_flight_requests_at_the_deadline_finish_and_count(server: str) -> None:
    result = loadgen.run_load(f"{server}/slow", connections=2, seconds=0.1, method="GET")
    assert result.statuses == {"200": 2}
    assert result.seconds >= 0.6


def test_a_refused_connection_is_an_error_not_a_crash() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = loadgen.run_load(f"http://127.0.0.1:{port}/", connections=1, seconds=0.2, method="GET")
    assert result.statuses == {}
    assert sum(result.errors.values()) == result.requests > 0
    assert any("refused" in text for text in result.errors)


def test_open_loop_latency_counts_from_when_a_request_was_due(server: str) -> None:
    # One connection to a server taking 50 ms cannot keep up with 100/s: later requests wait
    # for the worker, and their latency includes that wait.
    result = loadgen.run_load(f"{server}/sleep", connections=1, seconds=1.0, method="GET", rate=100)
    assert result.statuses.keys() == {"200"}
    assert 10 <= result.requests <= 25
    assert result.p99_ms > 500


def test_count_stops_the_load_after_that_many_requests(server: str) -> None:
    result = loadgen.run_load(f"{server}/big", connections=3, seconds=10, method="GET", count=7)
    assert result.statuses == {"200": 7}
    assert result.seconds < 5


def test_warming_the_token_caches_sends_every_token_the_same_number_of_times(
    settings: Settings, server: str, tmp_path: Path
) -> None:
    customers = Customers.make(settings, count=20)
    Handler.seen.clear()
    result = warm_token_caches(server, customers, tmp_path, rounds=3)
    assert result.statuses == {"200": 60}
    sent = collections.Counter(auth for auth, _ in Handler.seen)
    assert sent == {f"Bearer {token}": 3 for token in customers.tokens}
