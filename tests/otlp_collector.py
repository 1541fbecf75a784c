"""An OTLP/HTTP trace receiver for tests: the services export to it as to any collector
(an `ExportTraceServiceRequest` in OTLP's JSON encoding posted to /v1/traces, as
`shop.otlp_json` writes it), and a test reads the spans back."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: int  # OTLP's SpanKind: 2 server, 3 client, 4 producer, 5 consumer
    trace_id: str  # hex
    span_id: str
    parent_id: str  # "" for a root span
    links: tuple[tuple[str, str], ...]  # (trace id, span id)
    attributes: dict[str, Any]


def _value(value: dict[str, Any]) -> Any:
    """An AnyValue as Python: int64 values come as strings in OTLP's JSON."""
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    if "intValue" in value:
        return int(value["intValue"])
    (found,) = value.values()
    return found


def _attributes(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: _value(a["value"]) for a in items or []}


class Collector:
    """Spans received so far, from every process that exports to `endpoint`."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.endpoint = ""

    def receive(self, body: bytes) -> None:
        request = orjson.loads(body)
        received = []
        for resource_spans in request["resourceSpans"]:
            resource = _attributes(resource_spans["resource"].get("attributes"))
            for scope_spans in resource_spans["scopeSpans"]:
                for span in scope_spans["spans"]:
                    received.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name", "")),
                            name=span["name"],
                            kind=span["kind"],
                            trace_id=span["traceId"],
                            span_id=span["spanId"],
                            parent_id=span.get("parentSpanId", ""),
                            links=tuple((k["traceId"], k["spanId"]) for k in span.get("links", [])),
                            attributes=_attributes(span.get("attributes")),
                        )
                    )
        with self._lock:
            self.spans += received

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def find(self, **attributes: Any) -> list[ReceivedSpan]:
        with self._lock:
            return [
                s
                for s in self.spans
                if all(s.attributes.get(k) == v for k, v in attributes.items())
            ]


@contextmanager
def running_collector() -> Iterator[Collector]:
    """A collector listening on a free loopback port until the block ends."""
    collector = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            if self.headers.get("content-type") != "application/json":
                self.send_error(415)
                return
            collector.receive(body)
            answer = b"{}"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    collector.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="otlp-collector", daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
