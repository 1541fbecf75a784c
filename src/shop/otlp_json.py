"""Spans to an OTLP/HTTP receiver in OTLP's JSON encoding, written with orjson, encoded on
the service's event loop and posted from a worker thread.

OTLP/HTTP has two encodings, protobuf and JSON; Jaeger and the OpenTelemetry Collector take
both. The protobuf encoder of `opentelemetry-exporter-otlp-proto-http` spent 45 us of CPU per
span (a span costs the SDK 23 us to make), in the service's own process: at 10 % sampling that
was the largest part of what tracing cost a request (docs/performance.md, issue 23). Written as
JSON dicts with orjson, a span takes a few microseconds.

Where that encoding runs matters too: in the SDK's BatchSpanProcessor thread, whose turns at
the interpreter's lock hold the event loop up, `GET /products` traced whole read 0.71x of
untraced, and 0.81x with the encoding on the loop (4 rounds each, docs/performance.md, issue
23). So `Shipper` keeps the ended spans in a list and a task on the loop encodes them there, a
batch at a time; only the post, which waits on the network, goes to a thread.

The receiver is named by its base URL (`<endpoint>/v1/traces`); https is checked against the CA
file given; no redirect is followed; every request has a timeout. A failed export is logged
(at most once a minute) and its spans are dropped: spans never hold up the service.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import orjson
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

from shop.supervision import first_of

log = logging.getLogger(__name__)

_COMPLAIN_EVERY = 60.0  # seconds between two log lines about failed exports


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # (int64 is a string in OTLP's JSON)
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _attributes(attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in (attributes or {}).items()]


def _span(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    out: dict[str, Any] = {
        "traceId": f"{context.trace_id:032x}",  # hex, not base64, in OTLP's JSON
        "spanId": f"{context.span_id:016x}",
        "name": span.name,
        "kind": span.kind.value + 1,  # OTLP counts from UNSPECIFIED = 0
        "startTimeUnixNano": str(span.start_time),
        "endTimeUnixNano": str(span.end_time),
        "attributes": _attributes(span.attributes),
    }
    if span.parent is not None:
        out["parentSpanId"] = f"{span.parent.span_id:016x}"
    if span.links:
        out["links"] = [
            {
                "traceId": f"{link.context.trace_id:032x}",
                "spanId": f"{link.context.span_id:016x}",
                "attributes": _attributes(link.attributes),
            }
            for link in span.links
        ]
    if span.events:
        out["events"] = [
            {
                "timeUnixNano": str(e.timestamp),
                "name": e.name,
                "attributes": _attributes(e.attributes),
            }
            for e in span.events
        ]
    if span.status.status_code is not StatusCode.UNSET:
        out["status"] = {
            "code": span.status.status_code.value,
            "message": span.status.description or "",
        }
    return out


def encode(spans: Sequence[ReadableSpan]) -> bytes:
    """An ExportTraceServiceRequest in OTLP's JSON: spans grouped by resource, then by scope."""
    grouped: dict[int, tuple[Any, dict[tuple[str, str], list[dict[str, Any]]]]] = {}
    for span in spans:
        resource = grouped.setdefault(id(span.resource), (span.resource, {}))
        scope = span.instrumentation_scope
        key = (scope.name, scope.version or "") if scope is not None else ("", "")
        resource[1].setdefault(key, []).append(_span(span))
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": _attributes(resource.attributes)},
                "scopeSpans": [
                    {"scope": {"name": name, "version": version}, "spans": encoded}
                    for (name, version), encoded in scopes.items()
                ],
            }
            for resource, scopes in grouped.values()
        ]
    }
    return orjson.dumps(body)


class OtlpJsonExporter(SpanExporter):
    """Posts batches of spans to `<endpoint>/v1/traces` on one kept-alive connection, one
    post at a time (`Shipper` posts bodies it encoded; `export` encodes and posts)."""

    def __init__(
        self,
        endpoint: str,
        *,
        headers: Mapping[str, str] | None = None,
        ca_file: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        url = urlsplit(endpoint.rstrip("/") + "/v1/traces")
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port or (443 if self._https else 80)
        self._path = url.path
        self._headers = {"content-type": "application/json", **(headers or {})}
        self._context = ssl.create_default_context(cafile=ca_file) if self._https else None
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None
        self._complained = 0.0
        self._posting = threading.Lock()  # (the last post at shutdown may meet one under way)

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._https:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._connection

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.post(encode(spans))

    def post(self, body: bytes) -> SpanExportResult:
        """Post one encoded batch (`encode`); blocks until answered or timed out."""
        with self._posting:
            return self._post(body)

    def _post(self, body: bytes) -> SpanExportResult:
        for attempt in range(2):  # once more on a fresh connection: a kept-alive one may be stale
            try:
                connection = self._connect()
                connection.request("POST", self._path, body=body, headers=self._headers)
                answer = connection.getresponse()
                answer.read()
                if 200 <= answer.status < 300:
                    return SpanExportResult.SUCCESS
                self.complain(f"answered {answer.status}")
                return SpanExportResult.FAILURE
            except (OSError, http.client.HTTPException) as exc:
                self.shutdown()
                if attempt:
                    self.complain(repr(exc))
        return SpanExportResult.FAILURE

    def complain(self, what: str) -> None:
        now = time.monotonic()
        if now - self._complained >= _COMPLAIN_EVERY:
            self._complained = now
            log.warning(
                "could not export spans to %s:%s (%s); dropped", self._host, self._port, what
            )

    def shutdown(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class Shipper(SpanProcessor):
    """The provider's span processor: ended spans wait in a list (at most `limit`; beyond it
    they are dropped) until `run`, a task on the process's event loop, encodes them there,
    `batch` at a time, and has the exporter post each body from a worker thread. A batch goes
    once `batch` spans wait, or `every` seconds after the last round; `shutdown` posts what is
    left."""

    def __init__(
        self, exporter: OtlpJsonExporter, *, every: float, limit: int, batch: int = 512
    ) -> None:
        self._exporter = exporter
        self._every = every
        self._limit = limit
        self._batch = batch
        self._spans: list[ReadableSpan] = []
        self._wake: Callable[[], object] | None = None  # while `run` runs: its loop woken
        self._dropped = 0
        self._closed = False

    def on_end(self, span: ReadableSpan) -> None:
        if self._closed:
            return
        spans = self._spans
        if len(spans) >= self._limit:
            self._dropped += 1
            return
        spans.append(span)
        if len(spans) == self._batch and self._wake is not None:
            self._wake()

    async def run(self, stopping: asyncio.Event) -> None:
        """Ship the spans until `stopping` is set (a supervised worker: `Runtime.start`)."""
        if self._wake is not None:
            return  # (one task ships a process's spans)
        ready = asyncio.Event()
        self._wake = partial(asyncio.get_running_loop().call_soon_threadsafe, ready.set)
        try:
            while not stopping.is_set():
                await first_of(ready, stopping, timeout=self._every)
                ready.clear()
                due = len(self._spans)  # (those that come meanwhile wait for the next round)
                while due > 0:
                    body, due = self._take(), due - self._batch
                    await asyncio.to_thread(self._exporter.post, body)
                if self._dropped:
                    self._exporter.complain(f"{self._dropped} spans over the queue's {self._limit}")
                    self._dropped = 0
        finally:
            self._wake = None

    def _take(self) -> bytes:
        """The first `batch` spans waiting, encoded and taken off the list."""
        spans = self._spans
        taken = spans[: self._batch]
        del spans[: len(taken)]  # (a span another thread ends meanwhile is appended after)
        return encode(taken)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Post everything waiting, from the calling thread."""
        while self._spans:
            if self._exporter.post(self._take()) is not SpanExportResult.SUCCESS:
                return False
        return True

    def shutdown(self) -> None:
        """Take no more spans, post those waiting, close the connection."""
        self._closed = True
        self.force_flush()
        self._exporter.shutdown()
